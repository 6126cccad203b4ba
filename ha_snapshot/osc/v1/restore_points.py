"""``openstack ha restore point list``: a server's restore points."""

from osc_lib.command import command
from osc_lib import utils

from ha_snapshot.osc import resolve
from ha_snapshot.osc.v1 import servers


class ListRestorePoints(command.Lister):
    """List the restore points of a protected server, newest last."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        servers.add_server_argument(
            parser, 'Server whose restore points to list')
        servers.add_long_argument(parser)
        return parser

    def take_action(self, parsed_args):
        mgr = self.app.client_manager
        server_id = resolve.server_id(mgr, parsed_args.server)
        points = mgr.ha.list_restore_points(server_id)
        fields = ['id', 'number', 'taken_at', 'created_at', 'consistency',
                  'memory_state', 'disks', 'virtual_size', 'changed_bytes',
                  'new_bytes']
        headers = ['ID', 'Number', 'Taken At', 'Created At', 'Consistency',
                   'Memory State', 'Disks', 'Virtual Size', 'Changed Bytes',
                   'New Bytes']
        if parsed_args.long:
            fields += ['sequence', 'parent_id']
            headers += ['Sequence', 'Parent ID']
        return headers, (utils.get_dict_properties(
            dict(p, disks=disks_text(p.get('disks'))), fields)
            for p in points)


def disks_text(disks) -> str:
    """``vda (root), vdb (ephemeral)``; an API before disks: empty."""
    if not disks:
        return ''
    return ', '.join('%s (%s)' % (d.get('target') or 'root disk',
                                  d.get('role')) for d in disks)
