"""/v1/servers/{server_id}/restore-points: what a server can go back to."""

import json

from ha_snapshot.api.handlers import server
from ha_snapshot.api import util
from ha_snapshot.policies import restore_point as rp_policies


def restore_point_view(rp) -> dict:
    return {
        'id': rp.id,
        'number': rp.number,
        'sequence': rp.delta_sequence,
        'parent_id': rp.parent_id,
        'created_at': util.isotime(rp.created_at),
        'taken_at': util.isotime(rp.taken_at),
        'virtual_size': rp.virtual_size,
        'changed_bytes': rp.changed_bytes,
        'new_bytes': rp.new_bytes,
        'consistency': rp.consistency,
        'memory_state': bool(rp.memory_state),
        'disks': disks_view(rp),
    }


def disks_view(rp) -> list:
    """The disks a point covers: target, role and size of each; a point
    of the root disk alone (one writable disk, or an agent before RPC
    1.5) lists it without a target."""
    if not rp.disks:
        return [{'target': None, 'role': 'root', 'size': rp.virtual_size}]
    return [{'target': d['target'], 'role': d['role'], 'size': d['size']}
            for d in json.loads(rp.disks)]


@util.wsgify
def list_restore_points(req):
    row = server.find_server(req, util.path_item(req.environ, 'server_id'),
                             rp_policies.LIST)
    points = util.state(req).db.list_restore_points(row.uuid)
    return util.json_response(
        req, {'restore_points': [restore_point_view(p) for p in points]})
