"""[storage] and [retention]: where recovery images live and how long."""

from oslo_config import cfg
from oslo_utils import units

from ha_snapshot.conf import base

GROUP = cfg.OptGroup('storage', title='Recovery image store')

OPTS = [
    cfg.StrOpt('backend_url', default='file:///var/lib/ha-snapshot/store',
               help='Where recovery images are kept. The URL scheme picks '
                    'the driver from the ha_snapshot.storage namespace, '
                    'e.g. file:///var/lib/ha-snapshot/store.'),
    cfg.IntOpt('chunk_size', default=1 * units.Mi,
               min=64 * units.Ki, max=64 * units.Mi,
               help='Size of the content-addressed chunks of new recovery '
                    'images, a power of two (bytes). An existing image '
                    'keeps the chunk size of its baseline. The default '
                    'comes from benchmarks/chunk_size.py.'),
    cfg.StrOpt('chunk_compression', default='zstd',
               choices=['zstd', 'none'],
               help='Compression of stored chunks. A chunk that does not '
                    'shrink is stored as is.'),
    cfg.StrOpt('dedup_scope', default='project',
               choices=[('project', 'chunks shared by the instances of one '
                                    'project'),
                        ('instance', 'no sharing between instances')],
               help='Which recovery images share chunks. Sharing across '
                    'projects is not offered: content-addressed dedup '
                    'would tell one tenant what another holds.'),
    cfg.IntOpt('gc_grace_period', default=3600, min=10,
               help='Seconds an unreferenced chunk or temporary file is '
                    'kept before garbage collection removes it. A merge '
                    'taking more than half of this is abandoned, which '
                    'keeps garbage collection safe while merges run.'),
]

RETENTION_GROUP = cfg.OptGroup('retention', title='Restore point retention')

RETENTION_OPTS = [
    cfg.IntOpt('keep_last', default=24, min=1,
               help='The newest N restore points of an instance are always '
                    'kept, whatever their age.'),
    cfg.ListOpt('age_tiers', default=['1h:0', '1d:1h', '7d:1d'],
                help='Older restore points are thinned by age. Each tier '
                     'AGE:INTERVAL keeps, among restore points younger than '
                     'AGE (and older than the previous tier), the oldest of '
                     'every INTERVAL; INTERVAL 0 keeps all. Units s, m, h, '
                     'd, w. Restore points older than the last tier are '
                     'removed unless keep_last keeps them.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)
    base.register(conf, RETENTION_GROUP, RETENTION_OPTS)


def list_opts():
    return {GROUP: OPTS, RETENTION_GROUP: RETENTION_OPTS}
