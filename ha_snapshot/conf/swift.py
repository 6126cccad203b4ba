"""[swift]: how the ``swift`` storage backend reaches the object store.

Used when ``[storage] backend_url`` is ``swift://CONTAINER[/PREFIX]``. The
group holds keystoneauth1's session options (TLS, timeout) and auth options
(``auth_type`` and the plugin's own, e.g. ``password``), the way other
OpenStack services configure a client of another service, plus where the
object store is and how hard to retry it. ``auth_type = none`` with
``endpoint_override`` set to an account URL talks to a Swift without
Keystone (tests, a private proxy).
"""

from oslo_config import cfg

from ha_snapshot.conf import base

GROUP = cfg.OptGroup(
    'swift', title='Swift object store backend',
    help='Used when [storage] backend_url is swift://CONTAINER[/PREFIX]. '
         'Authentication and session options come from keystoneauth1: set '
         'auth_type (e.g. password, v3applicationcredential) and its '
         'options, or auth_type = none with endpoint_override.')

DEFAULT_TIMEOUT = 60

OPTS = [
    cfg.StrOpt('endpoint_override',
               help='The object store account URL, e.g. '
                    'https://swift.example.com/v1/AUTH_<project_id>. '
                    'Default: the object-store endpoint of the Keystone '
                    'catalog. Required with auth_type = none.'),
    cfg.StrOpt('region_name',
               help='Region of the object-store endpoint in the catalog.'),
    cfg.StrOpt('interface', default='public',
               choices=['public', 'internal', 'admin'],
               help='Which catalog endpoint of the object store to use; '
                    'internal keeps recovery data off public networks '
                    'where the cloud offers one.'),
    cfg.IntOpt('max_retries', default=5, min=0,
               help='How many times one request is retried after a '
                    'connection error, a 5xx answer or a 429 (too many '
                    'requests) before the operation fails with a storage '
                    'error (and nothing is acknowledged).'),
    cfg.FloatOpt('retry_backoff', default=1.0, min=0,
                 help='Seconds before the first retry; each further retry '
                      'waits twice as long, up to retry_backoff_max. A '
                      'Retry-After header sent by Swift is honoured up to '
                      'retry_backoff_max.'),
    cfg.FloatOpt('retry_backoff_max', default=30.0, min=0,
                 help='Longest wait between two retries (seconds).'),
    cfg.IntOpt('listing_limit', default=10000, min=1, max=10000,
               help='Objects asked for per container listing request; '
                    'listings page through larger containers. Swift '
                    'answers at most 10000 (its container_listing_limit).'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)
    base.register_keystoneauth(conf, GROUP.name, DEFAULT_TIMEOUT)


def list_opts():
    return {GROUP: OPTS + base.keystoneauth_opts(DEFAULT_TIMEOUT)}
