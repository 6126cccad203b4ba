"""[api]: ha-snapshot-api, the REST API and the Aodh alarm endpoint.

Keystone's own options (``[keystone_authtoken]``) belong to
keystonemiddleware and are registered by it when the auth_token middleware
is built; the sample configuration lists them through its own
``keystonemiddleware.auth_token`` generator namespace. oslo.policy's
``[oslo_policy]`` options are registered the same way (``oslo.policy``).
"""

from oslo_config import cfg

from ha_snapshot.conf import base

GROUP = cfg.OptGroup('api', title='ha-snapshot-api',
                     help='The REST API service (ha-snapshot-api).')

DEFAULT_PORT = 8799

OPTS = [
    cfg.HostAddressOpt('host', default='127.0.0.1',
                       help='Address the embedded server of '
                            'ha-snapshot-api binds (unused when a WSGI '
                            'server such as uwsgi or gunicorn serves '
                            'ha_snapshot.wsgi.api).'),
    cfg.PortOpt('port', default=DEFAULT_PORT,
                help='Port the embedded server binds.'),
    cfg.IntOpt('workers', default=8, min=1,
               help='Requests the embedded server runs at the same time '
                    '(application threads). Only complete requests reach '
                    'them: the server reads headers and bodies itself, so '
                    'idle or slow clients never hold one.'),
    cfg.IntOpt('processes', min=1,
               help='Processes of the embedded server, each running '
                    '[api] workers application threads, all accepting on '
                    'one listening socket (one Python process uses at '
                    'most one core). A process that dies is started '
                    'again. Unset: the number of CPUs of the host, as '
                    'OpenStack APIs count their workers.'),
    cfg.IntOpt('max_connections', default=1000, min=10,
               help='Client connections the embedded server keeps open at '
                    'once; further ones wait in the listen backlog.'),
    cfg.IntOpt('client_timeout', default=60, min=1,
               help='Seconds the embedded server keeps a connection on '
                    'which nothing was sent or received (an idle keep-alive '
                    'connection, or a client that stopped mid-request).'),
    cfg.IntOpt('shutdown_timeout', default=5, min=0,
               help='Seconds ha-snapshot-api lets running requests finish '
                    'after SIGTERM before it exits; requests waiting for '
                    'the manager are answered 503 at once.'),
    cfg.URIOpt('public_endpoint', schemes=['http', 'https'],
               help='The URL clients (and Aodh) reach this API at, e.g. '
                    'https://cloud.example.com/ha-snapshot. Alarm URLs '
                    '(the alarm_url of a server) and the versions '
                    'document are built from it. Unset: from the '
                    '"ha-snapshot" endpoint of the Keystone catalog when '
                    'the request carries one (auth_strategy = keystone), '
                    'else servers are shown without alarm_url (never from '
                    'the Host header a client sent).'),
    cfg.IntOpt('max_url_length', default=8192, min=256,
               help='Longest request target (path and query) accepted; '
                    'longer ones get 414.'),
    cfg.IntOpt('max_header_size', default=32768, min=1024,
               help='Largest total size of the request headers accepted; '
                    'larger ones get 431.'),
    # NOTE: the embedded default (like the sqlite database) is noauth on
    # loopback; a cloud sets keystone (the devstack plugin does).
    cfg.StrOpt('auth_strategy', default='noauth',
               choices=[('keystone', 'Keystone tokens, checked by '
                                     'keystonemiddleware with the '
                                     '[keystone_authtoken] options'),
                        ('noauth', 'No authentication: the identity is '
                                   'taken from the X-User-Id, X-Project-Id '
                                   'and X-Roles headers. For the embedded '
                                   'single-host setup and tests only.')],
               help='How requests are authenticated.'),
    cfg.StrOpt('alarm_secret_key', secret=True,
               help='Key of the per-server alarm secrets: an Aodh alarm '
                    'action http://HOST:PORT/v1/alarms/SERVER?secret=HEX '
                    'is accepted without a Keystone token when HEX is the '
                    'HMAC-SHA256 of the server id under this key '
                    '("ha-snapshot-manage alarm-url SERVER" or the '
                    'alarm_url field of GET /v1/servers/SERVER prints it). '
                    'Unset: only Keystone tokens (Aodh trust+http) are '
                    'accepted. Changing it invalidates every alarm URL.'),
    cfg.IntOpt('rpc_timeout', default=60, min=1,
               help='Seconds a call from the API to the manager may take. '
                    'A request that needs the manager is answered within '
                    'about this time whatever the message bus does: 503 '
                    'when the broker cannot be reached, 504 when the '
                    'manager does not answer.'),
    cfg.IntOpt('rpc_max_pending', default=32, min=1,
               help='Calls to the manager that may be outstanding at once '
                    '(a call that outlived rpc_timeout still counts until '
                    'oslo.messaging gives it back). Further requests that '
                    'need the manager get 503 at once.'),
    cfg.IntOpt('max_request_body_size', default=64 * 1024, min=1024,
               help='Largest request body (bytes) accepted; larger ones '
                    'get 413.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)


def list_opts():
    return {GROUP: OPTS}
