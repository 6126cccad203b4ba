"""[qemu] and [libvirt]: the hypervisor drivers' options.

The driver itself is chosen by name from the ``ha_snapshot.hypervisor``
namespace with ``[agent] hypervisor``.
"""

from oslo_config import cfg
from oslo_utils import units

from ha_snapshot.conf import base

GROUP = cfg.OptGroup('qemu', title='QEMU driver',
                     help='Live snapshots and commits of QEMU VMs over QMP.')

OPTS = [
    cfg.StrOpt('binary', default='qemu-system-x86_64',
               help='QEMU system emulator started for VMs the agent '
                    'launches itself (local recovery by restart). Debian '
                    'package qemu-system-x86.'),
    cfg.FloatOpt('connect_timeout', default=30.0, min=0.1,
                 help='Seconds to wait for a VM\'s QMP socket to accept a '
                      'connection and greet, when starting or attaching.'),
    cfg.FloatOpt('command_timeout', default=30.0, min=0.01,
                 help='Seconds one QMP command may take before it fails '
                      'with an error naming the command.'),
    cfg.FloatOpt('commit_timeout', default=3600.0, min=1,
                 help='Seconds a commit of a frozen overlay may take; the '
                      'block job is cancelled after that (the overlay '
                      'stays and is committed again later).'),
    cfg.IntOpt('commit_speed', default=0, min=0,
               help='Commit rate limit in bytes per second, 0 for none. '
                    'Limits the I/O a commit takes from the guest.'),
    cfg.FloatOpt('snapshot_wait', default=0.0, min=0,
                 help='Seconds a snapshot waits for a running commit of '
                      'the same VM before it is refused.'),
    cfg.BoolOpt('snapshot_preflush', default=True,
                help='Flush every disk just before a snapshot (guest I/O '
                     'goes on), so that the snapshot itself, during which '
                     'guest I/O is paused, has little left to flush. '
                     'Measured by benchmarks/snapshot_stall.py.'),
    cfg.FloatOpt('quit_timeout', default=10.0, min=0.1,
                 help='Seconds a VM gets to exit after QMP quit before it '
                      'is killed.'),
    cfg.StrOpt('overlay_dir',
               help='Where new overlays are created. Default: beside the '
                    'disk\'s base image.'),
    cfg.IntOpt('overlay_cluster_size', default=64 * units.Ki,
               min=512, max=2 * units.Mi,
               help='Cluster size of new overlays (bytes, a power of two): '
                    'the granularity of deltas.'),
]


LIBVIRT_GROUP = cfg.OptGroup(
    'libvirt', title='libvirt driver',
    help='Incremental backups of libvirt domains (Nova\'s servers) with '
         'checkpoints: dirty bitmaps and push-mode backup jobs.')

LIBVIRT_OPTS = [
    cfg.StrOpt('connection_uri', default='qemu:///system',
               help='libvirt connection URI: the one nova-compute uses '
                    '(its [libvirt] connection_uri, qemu:///system by '
                    'default).'),
    cfg.StrOpt('backup_dir', default='/var/lib/ha-snapshot/libvirt',
               help='Where the driver writes delta files (one qcow2 per '
                    'disk and snapshot, deleted once the manager has made '
                    'it durable) and the checkpoints it keeps per domain. '
                    'Never inside Nova\'s instances directory.'),
    cfg.FloatOpt('backup_timeout', default=3600.0, min=1,
                 help='Seconds a backup job may run before it is aborted '
                      'and the snapshot fails (nothing is lost: the next '
                      'one covers the same writes).'),
    cfg.FloatOpt('snapshot_wait', default=0.0, min=0,
                 help='Seconds a snapshot waits for a running commit of '
                      'the same domain before it is refused.'),
    cfg.FloatOpt('quit_timeout', default=60.0, min=0.1,
                 help='Seconds a domain gets to shut down cleanly before '
                      'it is destroyed (driver quit).'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)
    base.register(conf, LIBVIRT_GROUP, LIBVIRT_OPTS)


def list_opts():
    return {GROUP: OPTS, LIBVIRT_GROUP: LIBVIRT_OPTS}
