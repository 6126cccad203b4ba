"""``openstack ha protect|unprotect|list|show``: protected servers."""

from osc_lib.command import command
from osc_lib import utils

from ha_snapshot.osc import resolve

# NOTE: the SERVER document's fields in the order an operator reads them;
# fields a newer API adds are shown after these, not dropped.
SHOW_FIELDS = (
    'id', 'project_id', 'host', 'status', 'policy', 'driver',
    'rpo_seconds', 'newest_restore_point_id', 'newest_restore_point_at',
    'recovery_attempts', 'last_report_reason', 'disks_protected',
    'not_protected', 'created_at', 'updated_at',
)


def _rounded(server: dict) -> dict:
    # NOTE: the API gives the age to the microsecond; a tenth of a second
    # is what an RPO is read at.
    rpo = server.get('rpo_seconds')
    if isinstance(rpo, float):
        server = dict(server, rpo_seconds=round(rpo, 1))
    return server


def show_server(server: dict) -> tuple:
    """(columns, values) of a SERVER document for a ShowOne."""
    fields = [f for f in SHOW_FIELDS if f in server]
    fields += sorted(set(server) - set(SHOW_FIELDS))
    server = _rounded(server)
    if isinstance(server.get('disks_protected'), list):
        server = dict(server, disks_protected=', '.join(
            server['disks_protected']))
    return tuple(fields), utils.get_dict_properties(server, fields)


def add_server_argument(parser, purpose: str):
    """``purpose``: the help's start, e.g. "Server to protect"."""
    parser.add_argument(
        'server', metavar='<server>', help='%s (name or ID)' % purpose)


def add_long_argument(parser):
    parser.add_argument(
        '--long', action='store_true', default=False,
        help='List more fields in output')


class ProtectServer(command.ShowOne):
    """Protect a server: snapshot it continuously, recover it on failure.

    Protecting a server that is already protected changes nothing unless
    the policy or host given differ (the call is idempotent).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        add_server_argument(parser, 'Server to protect')
        parser.add_argument(
            '--policy', metavar='<policy>',
            help='Snapshot policy (e.g. adaptive, fixed); default: the '
                 'service\'s default policy')
        parser.add_argument(
            '--host', metavar='<host>',
            help='Compute host the server runs on (admin only); default: '
                 'the host Nova reports')
        return parser

    def take_action(self, parsed_args):
        mgr = self.app.client_manager
        server_id = resolve.server_id(mgr, parsed_args.server)
        server = mgr.ha.protect(server_id, policy=parsed_args.policy,
                                host=parsed_args.host)
        return show_server(server)


class UnprotectServer(command.Command):
    """Stop protecting a server (its restore points are removed)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        add_server_argument(parser, 'Server to unprotect')
        return parser

    def take_action(self, parsed_args):
        mgr = self.app.client_manager
        server_id = resolve.server_id(mgr, parsed_args.server)
        mgr.ha.unprotect(server_id)


class ListServers(command.Lister):
    """List protected servers with their status and achieved RPO."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--all-projects', action='store_true', default=False,
            help='List the servers of all projects (admin only)')
        parser.add_argument(
            '--project', metavar='<project>',
            help='List the servers of this project (name or ID; admin '
                 'only unless it is your own)')
        parser.add_argument(
            '--status', metavar='<status>',
            help='List only servers in this status (e.g. protected, '
                 'recovering, failed)')
        add_long_argument(parser)
        return parser

    def take_action(self, parsed_args):
        mgr = self.app.client_manager
        project = None
        if parsed_args.project:
            project = resolve.project_id(mgr, parsed_args.project)
        servers = mgr.ha.list_servers(
            all_projects=parsed_args.all_projects, project_id=project,
            status=parsed_args.status)
        fields = ['id']
        headers = ['ID']
        if parsed_args.all_projects or project:
            fields.append('project_id')
            headers.append('Project')
        fields += ['host', 'status', 'policy', 'rpo_seconds',
                   'newest_restore_point_at']
        headers += ['Host', 'Status', 'Policy', 'RPO (s)',
                    'Newest Restore Point At']
        if parsed_args.long:
            fields += ['driver', 'newest_restore_point_id',
                       'recovery_attempts', 'last_report_reason',
                       'updated_at']
            headers += ['Driver', 'Newest Restore Point', 'Recovery Attempts',
                        'Last Report', 'Updated At']
        return headers, (utils.get_dict_properties(_rounded(s), fields)
                         for s in servers)


class ShowServer(command.ShowOne):
    """Show a protected server: status, host, policy, newest restore point
    and its age (the achieved RPO)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        add_server_argument(parser, 'Server to show')
        return parser

    def take_action(self, parsed_args):
        mgr = self.app.client_manager
        server_id = resolve.server_id(mgr, parsed_args.server)
        return show_server(mgr.ha.get_server(server_id))
