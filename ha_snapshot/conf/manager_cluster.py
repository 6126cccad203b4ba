"""[manager_cluster]: several ha-snapshot-manager replicas on one database.

Each replica records itself in the database's ``managers`` table and
beats there every ``heartbeat_interval`` seconds; a replica whose latest
beat is ``dead_after_missed`` intervals old is dead. Instances are shared
among the live replicas by a consistent hash ring; exclusive work takes a
lease of ``lease_duration`` seconds. See doc/source/admin/managers.rst.
"""

from oslo_config import cfg

from ha_snapshot.conf import base

GROUP = cfg.OptGroup(
    'manager_cluster', title='Replicas of ha-snapshot-manager',
    help='How manager replicas sharing one database see each other. Every '
         'replica must use the same values: they judge each other with '
         'them.')

OPTS = [
    cfg.FloatOpt('heartbeat_interval', default=10.0, min=0.01,
                 help='Seconds between two heartbeats of a manager replica '
                      'in the database. Each heartbeat also refreshes the '
                      'replica\'s view of the live replicas and of who '
                      'owns which instance.'),
    cfg.IntOpt('dead_after_missed', default=6, min=2,
               help='Heartbeats a replica may miss before the others take '
                    'it for dead (its instances then move to the live '
                    'replicas): dead after heartbeat_interval * '
                    'dead_after_missed seconds without a beat, measured '
                    'by the database server\'s clock.'),
    cfg.FloatOpt('lease_duration', default=60.0, min=0.1,
                 help='Seconds a lease on exclusive work (a merge, a '
                      'recovery) lasts unless its holder renews it. After '
                      'that another replica may take the work over; the '
                      'first holder\'s later writes are then refused '
                      '(LeaseLost).'),
    cfg.IntOpt('hash_partitions', default=32, min=1, max=1024,
               help='Points of each replica on the hash ring (tooz '
                    'hashring partitions). More points spread instances '
                    'more evenly at a little more CPU per ring refresh.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)


def list_opts():
    return {GROUP: OPTS}
