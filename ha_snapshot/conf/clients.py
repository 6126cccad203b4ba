"""[nova], [glance]: how the manager reaches the Compute and Image APIs.

Each group holds keystoneauth1's session options (TLS, timeout) and auth
options (``auth_type`` and the plugin's own, e.g. ``password``), registered
through ``keystoneauth1.loading`` as other OpenStack services configure a
client of another service, plus where the endpoint is. ``auth_type = none``
with ``endpoint_override`` talks to the API without Keystone (unit tests, a
private endpoint).

The manager uses [nova] to look up a server's host when it protects one,
and both groups for the ``rebuild`` recovery action (upload the recovery
image to Glance, rebuild the server with it through Nova). The service user
needs the admin role (or a policy allowing it) to rebuild other projects'
servers and to give recovery images to their projects.
"""

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from ha_snapshot.conf import base

NOVA = cfg.OptGroup(
    'nova', title='Compute API (Nova)',
    help='Used to find a protected server\'s host and by the rebuild '
         'recovery action. Authentication and session options come from '
         'keystoneauth1: set auth_type (e.g. password) and its options, or '
         'auth_type = none with endpoint_override.')
GLANCE = cfg.OptGroup(
    'glance', title='Image API (Glance)',
    help='Used by the rebuild recovery action to upload recovery images. '
         'Authentication and session options come from keystoneauth1: set '
         'auth_type (e.g. password) and its options, or auth_type = none '
         'with endpoint_override.')

# NOTE: which openstacksdk service each group configures.
SERVICE_TYPES = {NOVA.name: 'compute', GLANCE.name: 'image'}

DEFAULT_TIMEOUT = 60


def _endpoint_opts(service: str, example: str) -> list:
    # NOTE: fresh Opt objects per group: oslo.config keeps per-group state
    # on them when a group is registered.
    return [
        cfg.StrOpt('endpoint_override',
                   help='The %s endpoint URL, e.g. %s. Default: the %s '
                        'endpoint of the Keystone catalog. Required with '
                        'auth_type = none.' % (service, example, service)),
        cfg.StrOpt('region_name',
                   help='Region of the %s endpoint in the catalog.'
                        % service),
        cfg.StrOpt('interface', default='public',
                   choices=['public', 'internal', 'admin'],
                   help='Which catalog endpoint of the %s API to use; '
                        'internal keeps recovery images off public networks '
                        'where the cloud offers one.' % service),
    ]


def nova_opts() -> list:
    return _endpoint_opts('compute', 'https://nova.example.com/v2.1')


def glance_opts() -> list:
    return _endpoint_opts('image', 'https://glance.example.com')


def register_opts(conf: cfg.ConfigOpts) -> None:
    for group, opts in ((NOVA, nova_opts()), (GLANCE, glance_opts())):
        base.register(conf, group, opts)
        ks_loading.register_session_conf_options(conf, group.name)
        ks_loading.register_auth_conf_options(conf, group.name)
        # NOTE: keystoneauth's default is no timeout at all: an API that
        # accepts connections and never answers would hang a recovery.
        # This bounds each request; an image upload's request lasts as
        # long as bytes keep flowing (it is a read timeout).
        conf.set_default('timeout', DEFAULT_TIMEOUT, group=group.name)


def _session_opts() -> list:
    opts = ks_loading.get_session_conf_options()  # NOTE: fresh copies
    for opt in opts:
        if opt.dest == 'timeout':
            opt.default = DEFAULT_TIMEOUT
    return opts


def list_opts():
    # NOTE: the sample documents the password plugin's options; any other
    # keystoneauth plugin's options are read once auth_type names it.
    return {group: opts + _session_opts()
            + ks_loading.get_auth_common_conf_options()
            + ks_loading.get_auth_plugin_conf_options('password')
            for group, opts in ((NOVA, nova_opts()),
                                (GLANCE, glance_opts()))}
