"""[agent]: the options of application-consistent (quiesced) snapshots,
of memory states and of multi-disk restore points.

The rest of the ``[agent]`` group lives in ha_snapshot/conf/manager.py;
these are registered into the same group.
"""

from oslo_config import cfg

from ha_snapshot.conf import base

GROUP = cfg.OptGroup('agent', title='ha-snapshot-agent')

QUIESCE_OPTS = [
    cfg.IntOpt('quiesce_interval', default=300, min=0,
               help='Seconds between application-consistent restore '
                    'points: a snapshot taken when this much time has '
                    'passed since the last one freezes the guest\'s file '
                    'systems through the QEMU guest agent first (its '
                    'fsfreeze-hook scripts run), the snapshots between '
                    'stay crash-consistent. 0: never quiesce. A server '
                    'overrides it with the spec key or server metadata '
                    '"ha_snapshot:quiesce" ("always", "never" or '
                    'seconds).'),
    cfg.FloatOpt('quiesce_max_freeze', default=0.5, min=0.01, max=10.0,
                 help='Longest time (seconds) a guest\'s file systems stay '
                      'frozen: the thaw is sent at this bound whatever '
                      'happens (a lost answer, a slow snapshot); a '
                      'snapshot that ends after it is recorded as '
                      'crash-consistent. The guest\'s writes wait while '
                      'it is frozen.'),
    cfg.FloatOpt('quiesce_ping_timeout', default=1.0, min=0.01,
                 help='Seconds the guest agent may take to answer the ping '
                      'that comes before a freeze. A silent agent means an '
                      'unquiesced (crash-consistent) snapshot, unless the '
                      'server requires quiesce (image property '
                      'os_require_quiesce): then that snapshot fails.'),
    cfg.FloatOpt('quiesce_command_timeout', default=5.0, min=0.01,
                 help='Seconds a thaw or a freeze status query may take.'),
]


DISK_OPTS = [
    cfg.BoolOpt('multi_disk', default=True,
                help='Protect every writable disk of a server (root, '
                     'ephemeral; swap when its spec says "protect_swap") '
                     'together: one snapshot of all of them, one delta, '
                     'one restore point, all restored by a restart. '
                     'Needs managers of RPC API 1.5: during a rolling '
                     'upgrade set it false on agents until every manager '
                     'is upgraded (then only the root disk is shipped, as '
                     'before; the other disks are snapshotted and '
                     'committed at once). Read-only disks (config drives, '
                     'cdroms) and attached Cinder volumes are never '
                     'protected.'),
]

MEMORY_OPTS = [
    cfg.IntOpt('memory_interval', default=0, min=0,
               help='Seconds between restore points that also carry the '
                    'VM\'s memory state (qemu driver only): a snapshot '
                    'taken when this much time has passed since the last '
                    'memory state saves the RAM and device state of the '
                    'same instant as the disks (QEMU\'s background '
                    'snapshot), and a restart from that point resumes the '
                    'guest instead of booting it. The state is chunked, '
                    'compressed and deduplicated by the store. 0: never '
                    '(the default). Memory snapshots are never quiesced: '
                    'a guest resumed inside a freeze would stay frozen.'),
    cfg.IntOpt('memory_save_timeout', default=300, min=1,
               help='Seconds a memory state may take to save; a save '
                    'that takes longer is cancelled and that restore '
                    'point has its disk only.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, QUIESCE_OPTS + MEMORY_OPTS + DISK_OPTS)


def list_opts():
    return {GROUP: QUIESCE_OPTS + MEMORY_OPTS + DISK_OPTS}
