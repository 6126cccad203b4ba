"""OpenStackClient plugin: what ``openstack`` loads for ``openstack ha``.

osc reads ``API_NAME``, ``API_VERSION_OPTION`` and ``API_VERSIONS``, calls
:func:`build_option_parser` to add the global options and
:func:`make_client` the first time a command uses
``self.app.client_manager.ha``. The command group is
``openstack.ha.v<major>`` (setup.cfg).

The endpoint is, first found: ``--os-ha-snapshot-url`` (or
``OS_HA_SNAPSHOT_URL``), ``ha_snapshot_endpoint_override`` in clouds.yaml,
the Keystone catalog entry of service type ``ha-snapshot``, the fixed
endpoint of ``--os-auth-type none --os-endpoint``.
"""

import logging
import re

from keystoneauth1 import exceptions as ksa_exc
from osc_lib import exceptions as osc_exc
from osc_lib import utils

from ha_snapshot import exception
from ha_snapshot.osc import client

LOG = logging.getLogger(__name__)

API_NAME = 'ha'
API_VERSION_OPTION = 'os_ha_snapshot_api_version'
# NOTE: the newest microversion this client knows; the API answers 406 to
# one it does not serve, which the client turns into a clear error.
DEFAULT_API_VERSION = client.LATEST_VERSION
API_VERSIONS = ('1', '1.0')
SERVICE_TYPE = client.SERVICE_TYPE

_VERSION = re.compile(r'^1\.(0|[1-9][0-9]*)$')


def check_api_version(version: str) -> bool:
    """Refuse a malformed ``--os-ha-snapshot-api-version`` up front.

    Returning True tells osc not to compare against ``API_VERSIONS``: any
    1.x is sent as is and the API says whether it serves it.
    """
    if not _VERSION.match(str(version)):
        raise osc_exc.CommandError(
            'Invalid --os-ha-snapshot-api-version %r: expected 1.N '
            '(e.g. %s).' % (version, DEFAULT_API_VERSION))
    return True


def _endpoint(instance) -> str:
    config = instance._cli_options.config
    url = config.get('ha_snapshot_url')
    if url:
        return url
    # NOTE: osc-lib looks at ha_snapshot_endpoint_override, then the
    # catalog (it authenticates here), then a noauth fixed endpoint.
    try:
        url = instance.get_endpoint_for_service_type(
            SERVICE_TYPE, region_name=instance.region_name,
            interface=instance.interface)
    except ksa_exc.CatalogException as e:
        # NOTE: not found, or an empty catalog; an authentication failure
        # is not caught here: osc reports it as such.
        raise exception.EndpointNotFound(reason=str(e)) from e
    if not url:
        raise exception.EndpointNotFound(
            reason='the service catalog has no "%s" endpoint (interface '
                   '%s, region %s)' % (SERVICE_TYPE, instance.interface,
                                       instance.region_name or 'any'))
    return url


def make_client(instance) -> client.Client:
    """The ha-snapshot API client, on the session osc authenticated."""
    instance.setup_auth()
    endpoint = _endpoint(instance)
    version = instance._api_version.get(API_NAME, DEFAULT_API_VERSION)
    LOG.debug('ha-snapshot API %s, version %s', endpoint, version)
    return client.Client(instance.session, endpoint, api_version=version)


def build_option_parser(parser):
    """Add ``--os-ha-snapshot-url`` and ``--os-ha-snapshot-api-version``."""
    parser.add_argument(
        '--os-ha-snapshot-url',
        metavar='<url>',
        default=utils.env('OS_HA_SNAPSHOT_URL'),
        help='ha-snapshot API endpoint, instead of the one in the service '
             'catalog (Env: OS_HA_SNAPSHOT_URL)')
    parser.add_argument(
        '--os-ha-snapshot-api-version',
        metavar='<ha-snapshot-api-version>',
        default=utils.env('OS_HA_SNAPSHOT_API_VERSION'),
        help='ha-snapshot API microversion, default=%s '
             '(Env: OS_HA_SNAPSHOT_API_VERSION)' % DEFAULT_API_VERSION)
    return parser
