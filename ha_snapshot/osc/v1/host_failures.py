"""``openstack ha host failure list`` and ``show``: compute hosts found
failed and the evacuation of their servers (admin)."""

from cliff import columns as cliff_columns
from osc_lib.command import command
from osc_lib import utils

from ha_snapshot.osc.v1 import servers


class ListHostFailures(command.Lister):
    """List the compute hosts the host monitor found failed.

    Each line is one failure of a host (or a partition of the mirror
    network, host ``*``): its state (confirmed, fenced, fence_failed,
    evacuating, evacuated, evacuation_failed, returned, partition,
    partition_ended), when it was detected (its agent went silent),
    confirmed (Nova reported it down) and fenced, the fencing driver's
    result or error, and its servers' recoveries by state. Needs the
    admin role (policy ha_snapshot:host_failure:list).
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
                  'evacuated_at', 'recoveries', 'result', 'evacuation']
        headers = ['Host', 'State', 'Detected At', 'Fenced At',
                   'Evacuated At', 'Recoveries', 'Result', 'Evacuation']
        if parsed_args.long:
            fields += ['id', 'confirmed_at', 'closed_at', 'fencing_driver',
                       'fence_attempts', 'error', 'reason']
            headers += ['ID', 'Confirmed At', 'Closed At', 'Fencing Driver',
                        'Fence Attempts', 'Error', 'Reason']
        return headers, (utils.get_dict_properties(
            f, fields, formatters={'recoveries': RecoveryCounts})
            for f in failures)


class RecoveryCounts(cliff_columns.FormattableColumn):
    """{"succeeded": 2, "failed": 1} as ``2 succeeded, 1 failed``."""

    def human_readable(self):
        return ', '.join('%d %s' % (n, state)
                         for state, n in sorted((self._value or {}).items()))


class Evacuations(cliff_columns.FormattableColumn):
    """Each server's recovery of a host failure, one per line."""

    def human_readable(self):
        return '\n'.join(
            '%s %s %s (step %s, finished %s)%s' % (
                r['server_id'], r['action'], r['state'], r['step'],
                r['finished_at'] or '-',
                ': ' + r['error'] if r.get('error') else '')
            for r in self._value or ())


class ShowHostFailure(command.ShowOne):
    """Show one host failure and each of its servers' recoveries.

    ``evacuations`` lists the recovery the evacuation started for each
    protected server of the host (action evacuate): its state, the step
    it reached, when it finished and its error (details: ``openstack ha
    recovery show <server> <recovery>``).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('failure', metavar='<failure-id>',
                            help='ID of the host failure (see openstack ha '
                                 'host failure list --long)')
        return parser

    def take_action(self, parsed_args):
        failure = self.app.client_manager.ha.show_host_failure(
            parsed_args.failure)
        names = sorted(failure)
        return names, utils.get_dict_properties(
            failure, names, formatters={'recoveries': RecoveryCounts,
                                        'evacuations': Evacuations})
