"""/v1/servers/{server_id}/recoveries: start one, and the history."""

from oslo_log import log as logging
import webob.exc

from ha_snapshot.api.handlers import server
from ha_snapshot.api.schemas import recovery as schema
from ha_snapshot.api import util
from ha_snapshot import exception
from ha_snapshot.policies import recovery as recovery_policies

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
    result = st.manager_api.recover(
        row.uuid, restore_point=body.get('restore_point_id'), reason=reason)
    LOG.info('Recovery %s of %s requested by user %s', result.get('id'),
             row.uuid, ctx.user_id)
    rec = st.db.get_recovery(result['id'])
    return util.json_response(req, {'recovery': recovery_view(rec)},
                              status=202)


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
