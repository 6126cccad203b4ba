"""[host_monitor]: detection and fencing of failed compute hosts.

The manager's host monitor (ha_snapshot.manager.host_monitor) compares the
heartbeats of the agents with Nova's view of each host's nova-compute
service, decides per host (ha_snapshot.manager.host_states) and fences a
host confirmed failed with the driver ``fencing_driver`` names (stevedore
namespace ``ha_snapshot.fencing``). See doc/source/admin/host-failure.rst.
"""

from oslo_config import cfg

from ha_snapshot.conf import base

GROUP = cfg.OptGroup(
    'host_monitor', title='Compute host failure detection and fencing',
    help='How the manager detects a failed compute host and fences it. '
         'Needs [nova] credentials of a user allowed to list and update '
         'compute services (admin). With several manager replicas one '
         'monitors at a time (leader lease leader:host-monitor); every '
         'replica must use the same values.')

OPTS = [
    cfg.BoolOpt('enabled', default=False,
                help='Watch the compute hosts and fence those that failed. '
                     'Off by default: turn it on once [nova] credentials '
                     'and a fencing driver are set, and not beside another '
                     'tool that fences the same hosts.'),
    cfg.FloatOpt('check_interval', default=10.0, min=0.1,
                 help='Seconds between two rounds of the monitor (read the '
                      'agents\' heartbeats and Nova\'s compute services, '
                      'decide, fence).'),
    cfg.FloatOpt('agent_timeout', default=60.0, min=1.0,
                 help='Seconds without a heartbeat from a host\'s agent '
                      'after which the host is suspect. A suspect host is '
                      'only acted on once Nova reports its compute '
                      'service down (or the fencing driver sees it '
                      'powered off). Keep it above the agents\' '
                      'heartbeat interval times a few missed beats.'),
    cfg.StrOpt('nova_service_binary', default='nova-compute',
               help='The binary of the compute service whose state Nova '
                    'reports per host (os-services).'),
    cfg.StrOpt('fencing_driver', default='nova-force-down',
               help='How a failed host is fenced before anything of it '
                    'may run elsewhere (stevedore namespace '
                    'ha_snapshot.fencing): nova-force-down (mark the '
                    'compute service forced_down through Nova\'s API, '
                    'microversion 2.53+), ipmi (power the host off '
                    'through its BMC with ipmitool, then force it down '
                    'in Nova) or none (rely on Nova\'s own down state '
                    'after service_down_time; nothing stops a host that '
                    'is only cut off).'),
    cfg.FloatOpt('partition_fraction', default=0.5, min=0.0, max=1.0,
                 help='Fraction of the monitored hosts whose agents, '
                      'silent at once, means the mirror environment\'s '
                      'network is cut off rather than the hosts dead: '
                      'more than this fraction silent (and at least '
                      'partition_min_hosts) and nothing is acted on; an '
                      'alarm is logged and recorded instead.'),
    cfg.IntOpt('partition_min_hosts', default=2, min=1,
               help='Hosts whose agents must be silent at once before it '
                    'may be a partition (see partition_fraction): one '
                    'silent host is a host failure, never a partition, '
                    'with the default.'),
    cfg.FloatOpt('confirm_time', default=0.0, min=0.0,
                 help='Seconds a host must stay suspect with Nova '
                      'reporting its compute service down, in consecutive '
                      'rounds, before it is fenced: a guard against a '
                      'nova-compute that flaps down and up. 0 fences at '
                      'the first round that sees both.'),
    cfg.FloatOpt('hold_down', default=300.0, min=0.0,
                 help='Seconds after a suspect host came back (its agent '
                      'beats again) during which a new silence of it is '
                      'held, not acted on: a flapping host is not fenced '
                      'while it flaps. It is acted on once it stayed '
                      'silent past the hold-down.'),
    cfg.BoolOpt('evacuate', default=True,
                help='Once a failed host is fenced, evacuate each of its '
                     'protected servers to another host with Nova '
                     '(microversion 2.95: it lands stopped) and restore '
                     'it from its newest restore point before starting '
                     'it (recovery action evacuate). False: fence and '
                     'record only, and leave the evacuation to Nova, '
                     'Masakari or the operator.'),
    cfg.IntOpt('max_parallel', default=4, min=1,
               help='Evacuations of one failed host\'s servers running at '
                    'once; the next start as these end, highest priority '
                    'first (server metadata priority_key).'),
    cfg.StrOpt('priority_key', default='ha_snapshot:priority',
               help='Nova server metadata key whose integer value orders '
                    'the evacuation of a failed host\'s servers: highest '
                    'first; servers without it count as 0.'),
    cfg.BoolOpt('restore_foreign_evacuations', default=True,
                help='When Nova reports a protected server rebuilt on '
                     'another host than the one it was protected on (an '
                     'evacuation by Masakari or an operator), restore its '
                     'data from its newest restore point (recovery '
                     'action evacuate, which does not evacuate again). '
                     'Turn it off where instance storage is shared and '
                     'an evacuated server keeps its disk.'),
    cfg.StrOpt('ipmi_hosts_file',
               help='ipmi driver: a JSON file mapping each compute host '
                    'name to its BMC, {"compute1": {"address": '
                    '"10.0.0.11", "username": "admin", "password_file": '
                    '"/etc/ha-snapshot/bmc/compute1", "interface": '
                    '"lanplus"}}. The password is read from password_file '
                    '(passed to ipmitool with -f, never on its command '
                    'line). A host not listed cannot be fenced by ipmi.'),
    cfg.StrOpt('ipmitool_path', default='ipmitool',
               help='ipmi driver: the ipmitool executable.'),
    cfg.FloatOpt('ipmi_timeout', default=30.0, min=1.0,
                 help='ipmi driver: seconds one ipmitool call may take, '
                      'and seconds to wait for the chassis to report '
                      'power off after a power off.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)


def list_opts():
    return {GROUP: OPTS}
