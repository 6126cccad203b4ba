"""[nova], [glance], [aodh]: how the manager reaches other OpenStack APIs.

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
servers and to give recovery images to their projects. [aodh] lets it
read the alarms that post to ha-snapshot-api (admin, or a policy allowing
``telemetry:get_alarm`` on other projects' alarms).
"""

from oslo_config import cfg

from ha_snapshot.conf import base

NOVA = cfg.OptGroup(
    'nova', title='Compute API (Nova)',
    help='Used to find a protected server\'s host and by the rebuild '
         'recovery action. Authentication and session options come from '
         'keystoneauth1: set auth_type (e.g. password) and its options, or '
         'auth_type = none with endpoint_override.')
AODH = cfg.OptGroup(
    'aodh', title='Alarming API (Aodh)',
    help='Used to verify an alarm before it may start a recovery ([recovery] '
         'alarm_verification): the manager asks Aodh whether the alarm a '
         'notification names really fired. Authentication and session '
         'options come from keystoneauth1: set auth_type (e.g. password) '
         'and its options, or auth_type = none with endpoint_override.')
GLANCE = cfg.OptGroup(
    'glance', title='Image API (Glance)',
    help='Used by the rebuild recovery action to upload recovery images. '
         'Authentication and session options come from keystoneauth1: set '
         'auth_type (e.g. password) and its options, or auth_type = none '
         'with endpoint_override.')

# NOTE: which openstacksdk service each group configures.
SERVICE_TYPES = {NOVA.name: 'compute', GLANCE.name: 'image',
                 AODH.name: 'alarm'}

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


def aodh_opts() -> list:
    return _endpoint_opts('alarming', 'https://aodh.example.com')


def _groups() -> tuple:
    return ((NOVA, nova_opts()), (GLANCE, glance_opts()),
            (AODH, aodh_opts()))


def register_opts(conf: cfg.ConfigOpts) -> None:
    for group, opts in _groups():
        base.register(conf, group, opts)
        base.register_keystoneauth(conf, group.name, DEFAULT_TIMEOUT)


def list_opts():
    return {group: opts + base.keystoneauth_opts(DEFAULT_TIMEOUT)
            for group, opts in _groups()}
