"""[malloc]: how a daemon's C allocator holds its memory over days.

See ha_snapshot/malloc.py and doc/source/admin/database.rst (the soak).
"""

from oslo_config import cfg

from ha_snapshot.conf import base

GROUP = cfg.OptGroup(
    'malloc', title='C allocator of the daemons',
    help='The daemons run many threads (the agent two per protected '
         'server, the manager its RPC and merge pools). glibc\'s allocator '
         'gives threads their own arenas and keeps the memory freed in '
         'them: over hours the process\'s resident memory creeps up with '
         'every delta although nothing in it is kept. These options bound '
         'that (glibc only; elsewhere they do nothing).')

OPTS = [
    cfg.IntOpt('arena_max', default=2, min=0, max=64,
               deprecated_opts=[cfg.DeprecatedOpt('malloc_arena_max',
                                                  group='memory')],
               help='Most malloc arenas of the process, set when it '
                    'starts (glibc\'s M_ARENA_MAX, as the MALLOC_ARENA_MAX '
                    'environment variable; an explicit MALLOC_ARENA_MAX '
                    'in the environment wins). 0: glibc\'s default of '
                    'eight per core. Fewer arenas hold less freed memory; '
                    'threads then share them (the daemons\' heavy work '
                    'is hashing, compression and I/O, done outside the '
                    'allocator).'),
    cfg.IntOpt('trim_interval', default=60, min=0,
               deprecated_opts=[cfg.DeprecatedOpt('malloc_trim_interval',
                                                  group='memory')],
               help='Seconds between two returns of the allocator\'s free '
                    'memory to the system (glibc\'s malloc_trim(0): free '
                    'pages of every arena are given back; about a '
                    'millisecond per 100 MB of heap). 0: never.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)


def list_opts():
    return {GROUP: OPTS}
