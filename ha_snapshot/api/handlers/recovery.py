"""/v1/servers/{server_id}/recoveries: start one, and the history."""

from oslo_log import log as logging
import webob.exc

from ha_snapshot.api.handlers import server
from ha_snapshot.api.schemas import recovery as schema
from ha_snapshot.api import util
from ha_snapshot import exception
from ha_snapshot.policies import recovery as recovery_policies
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)


def recovery_view(rec) -> dict:
    return {
        'id': rec.id,
        'server_id': rec.instance_uuid,
        'action': rec.action,
        'state': rec.state,
        'step': rec.step,
        'reason': rec.reason,
        'restore_point_id': rec.restore_point_id,
        'attempt': rec.attempt,
        'created_at': util.isotime(rec.created_at),
        'updated_at': util.isotime(rec.updated_at),
        'started_at': util.isotime(rec.started_at),
        'finished_at': util.isotime(rec.finished_at),
        'error': rec.error,
        'host_failure_id': rec.host_failure_id,
    }


@util.wsgify
def create_recovery(req):
    body = util.extract_json(req, schema.CREATE, empty_ok=True)
    row = server.find_server(req, util.path_item(req.environ, 'server_id'),
                             recovery_policies.CREATE)
    ctx = util.context(req)
    st = util.state(req)
    reason = body.get('reason') or 'operator request'
    reason = '%s (user %s)' % (reason, ctx.user_id)
    restore_point = body.get('restore_point_id')
    if body.get('consistency') == statuses.Consistency.FILESYSTEM:
        restore_point = _newest_consistent(req, st, row.uuid, restore_point)
    result = st.manager_api.recover(
        row.uuid, restore_point=restore_point, reason=reason)
    LOG.info('Recovery %s of %s requested by user %s', result.get('id'),
             row.uuid, ctx.user_id)
    rec = st.db.get_recovery(result['id'])
    return util.json_response(req, {'recovery': recovery_view(rec)},
                              status=202)


def _newest_consistent(req, st, uuid: str, restore_point) -> str:
    """The newest application-consistent restore point of the server
    (``consistency: filesystem`` in the body)."""
    if restore_point:
        raise util.http_error(
            webob.exc.HTTPBadRequest, 'Give restore_point_id or '
            'consistency, not both.', 'ha_snapshot.recovery.invalid')
    points = [p for p in st.db.list_restore_points(uuid)
              if p.consistency == statuses.Consistency.FILESYSTEM]
    if not points:
        raise util.http_error(
            webob.exc.HTTPConflict, 'Server %s has no application-'
            'consistent (filesystem) restore point: none was taken with '
            'its guest agent freezing it, or retention removed them. '
            'Recover from the newest crash-consistent one (no '
            '"consistency"), or check [agent] quiesce_interval and the '
            'guest agent.' % uuid, 'ha_snapshot.recovery.no_consistent_point')
    return points[-1].id


@util.wsgify
def list_recoveries(req):
    row = server.find_server(req, util.path_item(req.environ, 'server_id'),
                             recovery_policies.LIST)
    recs = util.state(req).db.list_recoveries(row.uuid)
    return util.json_response(
        req, {'recoveries': [recovery_view(r) for r in recs]})


@util.wsgify
def show_recovery(req):
    row = server.find_server(req, util.path_item(req.environ, 'server_id'),
                             recovery_policies.SHOW)
    recovery_id = util.path_item(req.environ, 'recovery_id')
    util.require_uuid(recovery_id, 'recovery')
    try:
        rec = util.state(req).db.get_recovery(recovery_id)
    except exception.RecoveryNotFound:
        rec = None
    if rec is None or rec.instance_uuid != row.uuid:
        raise util.http_error(
            webob.exc.HTTPNotFound,
            'Recovery %s of server %s not found.' % (recovery_id, row.uuid),
            'ha_snapshot.recovery.not_found')
    return util.json_response(req, {'recovery': recovery_view(rec)})
