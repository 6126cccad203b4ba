"""/v1/host-failures: compute hosts found failed and their fencing (admin).

Read-only, from the ``host_failures`` table the manager's host monitor
writes (ha_snapshot.manager.host_monitor): newest detection first.
``?host=NAME`` keeps one host's rows, ``?open=1`` the rows not closed.
A partition of the mirror network is a row of host ``*``.
"""

from ha_snapshot.api import util
from ha_snapshot.db import host_failures as db_failures
from ha_snapshot.policies import host_failure as host_failure_policies


def host_failure_view(row) -> dict:
    return {
        'id': row.id,
        'host': row.host,
        'state': row.state,
        'reason': row.reason,
        'detected_at': util.isotime(row.detected_at),
        'confirmed_at': util.isotime(row.confirmed_at),
        'fenced_at': util.isotime(row.fenced_at),
        'closed_at': util.isotime(row.closed_at),
        'updated_at': util.isotime(row.updated_at),
        'fencing_driver': row.fencing_driver,
        'fence_attempts': row.fence_attempts,
        'result': row.result,
        'error': row.error,
    }


@util.wsgify
def list_host_failures(req):
    util.context(req).can(host_failure_policies.LIST)
    st = util.state(req)
    rows = db_failures.HostFailures(st.db).list(
        req.GET.get('host') or None, open_only=util.query_bool(req, 'open'))
    return util.json_response(req, {'host_failures': [
        host_failure_view(row) for row in rows]})
