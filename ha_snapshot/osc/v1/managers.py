"""``openstack ha manager list``: the manager replicas (admin)."""

from osc_lib.command import command
from osc_lib import utils

from ha_snapshot.osc.v1 import servers


# NOTE: the work counters of GET /v1/managers ("counters"), as columns of
# --long: (field, header).
COUNTERS = [
    ('deltas_merged', 'Deltas Merged'),
    ('shipped_bytes', 'Shipped Bytes'),
    ('stored_bytes', 'Stored Bytes'),
    ('recoveries_succeeded', 'Recoveries Succeeded'),
    ('recoveries_failed', 'Recoveries Failed'),
]


def _row(manager: dict, fields: list) -> tuple:
    manager = dict(manager, alive='alive' if manager.get('alive') else 'dead')
    # NOTE: the counters are columns of their own; an API without them
    # leaves those columns empty.
    manager.update((name, value) for name, value in
                   (manager.pop('counters', None) or {}).items()
                   if name not in manager)
    return utils.get_dict_properties(manager, fields)


class ListManagers(command.Lister):
    """List the ha-snapshot-manager replicas sharing the database.

    Each line is one incarnation of a replica: its host, whether it is
    alive (a heartbeat within [manager_cluster] heartbeat_interval *
    dead_after_missed seconds, by the database's clock), the age of its
    last heartbeat and how many protected servers it owns. --long adds
    the leases it holds and what it did since it started (deltas merged,
    bytes shipped and stored, recoveries run to their end). Needs the
    admin role (policy ha_snapshot:manager:list).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        servers.add_long_argument(parser)
        return parser

    def take_action(self, parsed_args):
        managers = self.app.client_manager.ha.list_managers()
        fields = ['host', 'alive', 'heartbeat_age', 'servers', 'started_at']
        headers = ['Host', 'State', 'Heartbeat Age', 'Servers', 'Started At']
        if parsed_args.long:
            fields += ['id', 'pid', 'version', 'heartbeat_at', 'stopped_at',
                       'leases'] + [name for name, _h in COUNTERS]
            headers += ['ID', 'PID', 'Version', 'Heartbeat At', 'Stopped At',
                        'Leases'] + [header for _n, header in COUNTERS]
        return headers, (_row(m, fields) for m in managers)
