"""``openstack ha host failure list``: compute hosts found failed (admin)."""

from osc_lib.command import command
from osc_lib import utils

from ha_snapshot.osc.v1 import servers


class ListHostFailures(command.Lister):
    """List the compute hosts the host monitor found failed.

    Each line is one failure of a host (or a partition of the mirror
    network, host ``*``): its state (confirmed, fenced, fence_failed,
    returned, partition, partition_ended), when it was detected (its
    agent went silent), confirmed (Nova reported it down) and fenced, and
    the fencing driver's result or error. Needs the admin role (policy
    ha_snapshot:host_failure:list).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('--host', metavar='<host>',
                            help='Only the failures of this compute host.')
        parser.add_argument('--open', action='store_true',
                            help='Only the failures not closed yet.')
        servers.add_long_argument(parser)
        return parser

    def take_action(self, parsed_args):
        failures = self.app.client_manager.ha.list_host_failures(
            host=parsed_args.host, open_only=parsed_args.open)
        fields = ['host', 'state', 'detected_at', 'fenced_at',
                  'fencing_driver', 'result']
        headers = ['Host', 'State', 'Detected At', 'Fenced At',
                   'Fencing Driver', 'Result']
        if parsed_args.long:
            fields += ['id', 'confirmed_at', 'closed_at', 'fence_attempts',
                       'error', 'reason']
            headers += ['ID', 'Confirmed At', 'Closed At', 'Fence Attempts',
                        'Error', 'Reason']
        return headers, (utils.get_dict_properties(f, fields)
                         for f in failures)
