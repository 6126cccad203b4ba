"""[manager], [recovery], [agent]: the daemons' own options."""

from oslo_config import cfg

from ha_snapshot.conf import base

MANAGER = cfg.OptGroup('manager', title='ha-snapshot-manager')
MANAGER_OPTS = [
    cfg.StrOpt('spool_dir', default='/var/lib/ha-snapshot/spool',
               help='Where delta parts wait for their commit when they do '
                    'not fit in spool_memory_mb.'),
    cfg.IntOpt('spool_memory_mb', default=128, min=0,
               help='MiB of delta parts held in memory until their commit, '
                    'counted as they cost (decoded bytes, extents and '
                    'bookkeeping: a part of zero extents only costs its '
                    'extents); parts beyond it are written to '
                    'spool_dir. Parts are never written twice (spool and '
                    'store) while they fit. Parts held are lost with a '
                    'restart of the manager; agents then send them again. '
                    '0 writes every part to spool_dir.'),
    cfg.IntOpt('spool_max_age', default=3600, min=300,
               help='Seconds the parts of an uncommitted delta are kept '
                    'after its latest part arrived (an agent that lost its '
                    'state, a server unprotected or deleted mid-delta). '
                    'Then a sweep drops them, from memory and spool_dir, '
                    'with the chunks stored ahead for them; an agent that '
                    'still wants the delta is told at commit that its '
                    'parts were never received and sends them again. The '
                    'sweep runs every spool_max_age / 10 s (at most every '
                    '60 s).'),
    cfg.IntOpt('max_delta_parts', default=2 * 1024 * 1024, min=1,
               help='Parts one delta may have (parts are numbered from 0; '
                    'a part numbered at or beyond this is refused: '
                    'DeltaTooManyParts). The default takes a delta of '
                    '8 TiB of data in parts of the default [image] '
                    'max_part_bytes (4 MiB). Bounds what one delta may put '
                    'in spool_dir.'),
    cfg.IntOpt('max_deltas_per_instance', default=4, min=1,
               help='Uncommitted deltas of one instance whose parts the '
                    'manager holds at once. An agent sends one delta at a '
                    'time, so more are deltas it abandoned; a part of one '
                    'more delta is deferred (TooManyDeltas: the agent '
                    'sends it again later) until a commit or '
                    'spool_max_age frees room.'),
    cfg.StrOpt('host', sample_default='<hostname>',
               help='Name of this manager on the bus (default: hostname).'),
    cfg.IntOpt('rpc_timeout', default=120, min=1,
               help='Seconds an RPC call to an agent may take.'),
    cfg.BoolOpt('protect_all', default=False,
                help='Protect every server Nova creates, not only those '
                     'with metadata or a flavor extra spec '
                     'ha_snapshot:protect=true.'),
    cfg.BoolOpt('listen_notifications', default=True,
                help='Listen to Nova\'s versioned notifications (Nova must '
                     'send them: [notifications] notification_format = '
                     'versioned and [oslo_messaging_notifications] driver '
                     '= messagingv2).'),
    cfg.ListOpt('notification_topics', default=['versioned_notifications'],
                help='Topics Nova sends versioned notifications on.'),
    # NOTE: the pool names the listener's queue: it must not be the
    # manager's RPC topic (ha-snapshot-manager), or the RPC server and the
    # listener share one queue and take each other's messages.
    cfg.StrOpt('notification_pool', default='ha-snapshot-notifications',
               help='Listener pool: managers in one pool share the stream '
                    'instead of each seeing every notification.'),
]

RECOVERY = cfg.OptGroup('recovery', title='Recovery of failed servers')
RECOVERY_OPTS = [
    cfg.StrOpt('action', default='restart',
               help='Recovery action, from the ha_snapshot.recovery '
                    'namespace: restart (local QEMU) or rebuild (Nova).'),
    cfg.IntOpt('max_attempts', default=3, min=1,
               help='Failed recoveries in a row after which the instance '
                    'is marked failed and left to the operator.'),
    cfg.IntOpt('cooldown', default=60, min=0,
               help='Seconds after a recovery during which new reports for '
                    'the same instance are recorded but start nothing.'),
    cfg.IntOpt('attempts_reset', default=3600, min=60,
               help='Seconds without any report after which the count of '
                    'recovery attempts starts again from zero.'),
    cfg.IntOpt('timeout', default=300, min=10,
               help='Seconds the manager waits for the agent to answer '
                    'a recovery call (restart, or the re-baseline after '
                    'a rebuild) before it fails the recovery. Both write '
                    'the restore point\'s disks within the call (the '
                    'restart every disk not live-restored, the re-baseline '
                    'every disk but the root): raise it for servers with '
                    'large disks (about 10 s per GiB of data measured '
                    'here). Not a '
                    'limit on the whole recovery: the rebuild\'s wait '
                    'for Nova has [recovery] rebuild_timeout.'),
    cfg.IntOpt('workers', default=4, min=1,
               help='Recoveries run at the same time.'),
    cfg.StrOpt('alarm_verification', default='auto',
               choices=[('auto', 'aodh when [aodh] auth_type is set, '
                                 'none otherwise'),
                        ('aodh', 'an alarm starts a recovery only if Aodh '
                                 'confirms it fired after the last recovery'),
                        ('none', 'every alarm notification that passes the '
                                 'API\'s authentication counts')],
               help='How the manager checks an alarm posted to '
                    'ha-snapshot-api before it may start a recovery. An '
                    'alarm URL (with its secret) is a bearer credential: '
                    'with none, whoever captured it can start a recovery '
                    'after every cooldown; with aodh a replayed '
                    'notification starts nothing, because Aodh says the '
                    'alarm has not fired again. See the alarms page of '
                    'the admin guide.'),
    cfg.DictOpt('actions', default={'qemu': 'restart', 'libvirt': 'rebuild'},
                help='Recovery action per hypervisor driver of the '
                     'instance, as driver:action pairs: local QEMU VMs '
                     'are restarted by their agent, Nova-managed (libvirt) '
                     'servers rebuilt through Nova. Drivers not listed use '
                     '[recovery] action.'),
    # NOTE: options of the rebuild action (ha_snapshot/recovery/rebuild.py).
    cfg.StrOpt('image_disk_format', default='qcow2',
               choices=['qcow2', 'raw'],
               help='rebuild: format of the recovery image uploaded to '
                    'Glance. qcow2 sends only the allocated data; raw '
                    'sends the whole virtual size (zeros included) but '
                    'suits Ceph-backed Glance and Nova, which want raw.'),
    cfg.StrOpt('image_owner', default='project',
               choices=['project', 'service'],
               help='rebuild: project owning the recovery image: the '
                    'server\'s own project (needs a service user allowed '
                    'to set an image\'s owner, e.g. admin; otherwise the '
                    'image falls back to the service project) or the '
                    'service user\'s project. Images are private either '
                    'way.'),
    cfg.IntOpt('keep_images', default=1, min=0,
               help='rebuild: recovery images kept in Glance per instance '
                    'after a successful rebuild, the one the server now '
                    'runs from first. Keep at least 1 if Nova may need the '
                    'image again (evacuation, or a rebuild without a new '
                    'image); 0 deletes it at once. Only images of finished '
                    'recoveries are counted and deleted.'),
    cfg.IntOpt('image_sweep_interval', default=600, min=0,
               help='rebuild: seconds between two sweeps that delete the '
                    'recovery images of servers Nova has deleted (they '
                    'count against their project\'s image quota and serve '
                    'nobody). Only images of instances this manager knows '
                    'as deleted go, never while such an instance has a '
                    'recovery in progress. 0 keeps them. Runs only where an '
                    'instance may be rebuilt ([recovery] action or '
                    'actions names rebuild); with several manager replicas, '
                    'on one at a time (the holder of the leader lease '
                    'leader:image-sweep).'),
    cfg.IntOpt('rebuild_timeout', default=900, min=1,
               help='rebuild: seconds Nova may take to rebuild the server '
                    'and bring it back ACTIVE.'),
    cfg.FloatOpt('rebuild_poll_interval', default=2.0, min=0.01,
                 help='rebuild: seconds between two looks at the server '
                      'while Nova rebuilds it.'),
    cfg.StrOpt('work_dir', default='/var/lib/ha-snapshot/recovery',
               help='rebuild: where a restore point is exported before its '
                    'upload to Glance; needs room for the image (a raw '
                    'export is sparse; qcow2 needs the raw file and the '
                    'qcow2 one for a while).'),
]

AGENT = cfg.OptGroup('agent', title='ha-snapshot-agent')
AGENT_OPTS = [
    cfg.StrOpt('state_dir', default='/var/lib/ha-snapshot/agent',
               help='Per-instance state and overlays not yet acknowledged.'),
    cfg.StrOpt('host', sample_default='<hostname>',
               help='This compute host\'s name on the bus (default: '
                    'hostname); Nova\'s instance host must match it.'),
    cfg.StrOpt('hypervisor', default='qemu',
               help='Hypervisor driver, from the ha_snapshot.hypervisor '
                    'namespace.'),
    cfg.IntOpt('rpc_timeout', default=60, min=1,
               help='Seconds one call to the manager may take.'),
    cfg.FloatOpt('retry_initial', default=0.5, min=0.01,
                 help='First delay (s) before a failed shipment is retried; '
                      'it doubles up to retry_max.'),
    cfg.FloatOpt('retry_max', default=30.0, min=0.1,
                 help='Longest delay (s) between retries.'),
    cfg.FloatOpt('health_interval', default=1.0, min=0.05,
                 help='Seconds between health checks of each VM.'),
    cfg.IntOpt('health_failures', default=3, min=1,
               help='Consecutive failed checks (QMP or guest agent) before '
                    'the VM is reported abnormal.'),
    cfg.FloatOpt('health_timeout', default=2.0, min=0.05,
                 help='Seconds a QMP or guest-agent ping may take.'),
    cfg.IntOpt('rebaseline_start_timeout', default=900, min=1,
               help='Seconds a VM re-baselined while stopped (a server '
                    'the rebuild or evacuate recovery rebuilt stopped) '
                    'may take to be started: its snapshots and health '
                    'checks begin once it runs; later it is reported '
                    'abnormal.'),
    cfg.FloatOpt('heartbeat_interval', default=10.0, min=0.1,
                 help='Seconds between heartbeats to the manager.'),
    cfg.IntOpt('max_pending_deltas', default=3, min=1, max=16,
               help='Snapshots an instance may take ahead of the '
                    'manager\'s durable acknowledgements. Each is a frozen '
                    'overlay in the VM\'s disk chain until it is '
                    'acknowledged: a manager that is away stops the '
                    'snapshots here, not the VM. The achieved RPO may '
                    'exceed the policy\'s target by up to this many '
                    'shipping times when deltas queue. Acknowledged '
                    'overlays are committed down apart from the shipping; '
                    'the shipping waits while this many of them wait for '
                    'their commit.'),
    cfg.IntOpt('parts_in_flight', default=3, min=1, max=16,
               help='Parts of one delta sent at once: the manager checks '
                    'and stores one while the next travel. Each holds up '
                    'to [image] max_part_bytes (and its base64 text) in the '
                    'agent\'s memory.'),
    cfg.BoolOpt('live_restore', default=False,
                help='Local restart (qemu driver): start the VM at once on '
                     'a new overlay whose backing is the restore point, '
                     'served by the agent over NBD from the manager\'s '
                     'chunks, and pull the data in with block-stream while '
                     'the guest runs. The guest runs after a time that '
                     'does not grow with the disk; its reads of data not '
                     'yet copied are slower meanwhile. If the stream '
                     'fails for good, the VM is stopped and what the guest '
                     'wrote since the restart is lost (the recovery is '
                     'recorded failed). Off: the whole restore point is '
                     'fetched before the VM starts.'),
    cfg.IntOpt('live_restore_retries', default=2, min=0,
               help='Live restore: how many times a failed stream is '
                    'started again (it goes on where it stopped) before '
                    'the restart fails.'),
    cfg.IntOpt('live_restore_reconnect_delay', default=5, min=0,
               help='Live restore: seconds QEMU\'s NBD client holds reads '
                    'while it reconnects to the agent\'s export before '
                    'they fail.'),
    cfg.IntOpt('live_restore_timeout', default=240, min=1,
               help='Live restore: seconds the stream may take in all. '
                    'Keep it below the manager\'s [recovery] timeout, '
                    'which bounds the whole restart call.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, MANAGER, MANAGER_OPTS)
    base.register(conf, RECOVERY, RECOVERY_OPTS)
    base.register(conf, AGENT, AGENT_OPTS)


def list_opts():
    return {MANAGER: MANAGER_OPTS, RECOVERY: RECOVERY_OPTS,
            AGENT: AGENT_OPTS}
