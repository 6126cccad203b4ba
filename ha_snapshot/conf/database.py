"""[database]: the manager's metadata database (oslo.db's own options).

The options are oslo.db's; only the default differs: an embedded sqlite
file. Production deployments point ``connection`` at MySQL or PostgreSQL.
One option is ours: ``sqlite_busy_timeout``.
"""

import copy

from oslo_config import cfg
from oslo_db import options

GROUP = cfg.OptGroup('database', title='Metadata database',
                     help='Where the manager records instances, restore '
                          'points and recoveries (oslo.db options).')

DEFAULT_CONNECTION = 'sqlite:////var/lib/ha-snapshot/ha-snapshot.sqlite'

OPTS = [
    cfg.FloatOpt('sqlite_busy_timeout', default=60.0, min=0.1,
                 help='sqlite only: seconds a transaction waits for a lock '
                      'another process (the API, ha-snapshot-manage) holds '
                      'before it fails; such a failure is retried with '
                      'back-off by the manager (and by the API) before any '
                      'error is returned. Within one process writes queue '
                      'on a lock and never meet this timeout.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    options.set_defaults(conf, connection=DEFAULT_CONNECTION)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    # NOTE: copies, so that the sample shows our default without changing
    # oslo.db's option objects for every other user in the process.
    opts = copy.deepcopy(options.database_opts)
    for opt in opts:
        if opt.dest == 'connection':
            opt.default = DEFAULT_CONNECTION
    return {GROUP: opts + OPTS}
