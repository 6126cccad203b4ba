"""[policy]: how often each protected instance is snapshotted."""

from oslo_config import cfg

from ha_snapshot.conf import base

GROUP = cfg.OptGroup(
    'policy', title='Snapshot policy',
    help='The policy engine of the agent picks the time between two '
         'snapshots of an instance from its write rate, the size and '
         'shipping time of its deltas and the load of the host.')

OPTS = [
    cfg.StrOpt('name', default='adaptive',
               help='Snapshot policy, by name, from the ha_snapshot.policy '
                    'namespace: "fixed" (every [policy] interval seconds) '
                    'or "adaptive" (keeps the recovery point objective '
                    '[policy] rpo_target).'),
    cfg.FloatOpt('interval', default=60.0, min=0.2,
                 help='Seconds between two snapshots, for the fixed '
                      'policy.'),
    cfg.FloatOpt('rpo_target', default=60.0, min=0.2,
                 help='Recovery point objective of the adaptive policy, '
                      'in seconds: the most writes, counted in time, that '
                      'a failure may lose. The achieved RPO is the age of '
                      'the newest durable restore point just before the '
                      'next one becomes durable, about one interval plus '
                      'one shipping time.'),
    cfg.FloatOpt('min_interval', default=5.0, min=0.1,
                 help='Shortest time between two snapshots (seconds), '
                      'whatever the adaptive policy computes. At most '
                      'rpo_target.'),
    cfg.FloatOpt('max_interval', default=600.0, min=1.0,
                 help='Longest time between two snapshots (seconds): the '
                      'bound for idle instances and severe host overload. '
                      'At least rpo_target.'),
    cfg.FloatOpt('safety_margin', default=0.1, min=0.0, max=0.5,
                 help='Share of rpo_target the adaptive policy keeps in '
                      'reserve for shipping times longer than predicted. '
                      'The margin also grows with the measured prediction '
                      'error. A moderately overloaded host may use it.'),
    cfg.FloatOpt('host_cpu_high', default=85.0, min=1.0, max=100.0,
                 help='Host CPU use (percent, all CPUs) above which the '
                      'host counts as overloaded: the adaptive policy '
                      'snapshots less often, within rpo_target.'),
    cfg.FloatOpt('host_iowait_high', default=20.0, min=1.0, max=100.0,
                 help='Host I/O wait (percent of CPU time) above which the '
                      'host counts as overloaded.'),
    cfg.FloatOpt('host_cpu_severe', default=98.0, min=1.0, max=100.0,
                 help='Host CPU use (percent) from which the overload is '
                      'severe. If the agent is a significant part of the '
                      'load (host_own_share_severe), the adaptive policy '
                      'then backs off past rpo_target, up to '
                      'backoff_max_stretch. At least host_cpu_high.'),
    cfg.FloatOpt('host_iowait_severe', default=50.0, min=1.0, max=100.0,
                 help='Host I/O wait (percent) from which the overload is '
                      'severe. At least host_iowait_high.'),
    cfg.FloatOpt('host_own_share_severe', default=30.0, min=0.0, max=100.0,
                 help='Our share of a severe overload (percent of the '
                      'busy host CPU time, or of the host disk traffic for '
                      'an I/O wait overload) from which the adaptive '
                      'policy may give up rpo_target to relieve the host. '
                      'Ours is the agent process and the qemu-img '
                      'processes it runs. Below it the load is someone '
                      'else\'s, snapshotting less would hardly relieve '
                      'it, and the policy backs off within rpo_target only. '
                      '0 gives up the target at every severe overload.'),
    cfg.FloatOpt('host_window', default=10.0, min=0.0, max=300.0,
                 help='Seconds over which the agent averages host CPU, I/O '
                      'wait, disk traffic and its own share of them before '
                      'the adaptive policy judges the load, so that one '
                      'busy moment does not count as an overload. 0 uses '
                      'the time since the previous decision only.'),
    cfg.FloatOpt('backoff_factor', default=2.0, min=1.0, max=10.0,
                 help='Factor by which the adaptive policy stretches the '
                      'interval at each decision while the instance '
                      'writes nothing, or while the host is overloaded '
                      'and all of the load is ours. For an overload it is '
                      'scaled by our share of the load: with a share s the '
                      'interval grows by 1 + (backoff_factor - 1) * s.'),
    cfg.FloatOpt('backoff_max_stretch', default=4.0, min=1.0, max=100.0,
                 help='At most this many times the interval that keeps '
                      'rpo_target may a severe overload stretch the '
                      'interval (and never past max_interval). 1 never '
                      'gives up the target for the host\'s sake.'),
    cfg.FloatOpt('ewma_alpha', default=0.3, min=0.01, max=1.0,
                 help='Weight of the newest shipping measurement in the '
                      'moving averages of the adaptive policy (1 keeps '
                      'only the newest).'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)


def list_opts():
    return {GROUP: OPTS}
