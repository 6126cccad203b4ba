"""/v1/host-failures: compute hosts found failed, their fencing and the
evacuation of their servers (admin).

Read-only, from the ``host_failures`` table the manager's host monitor
writes (ha_snapshot.manager.host_monitor): newest detection first.
``?host=NAME`` keeps one host's rows, ``?open=1`` the rows not closed.
A partition of the mirror network is a row of host ``*``. Each row
counts the recoveries its evacuation started by state
(``recoveries``); ``/v1/host-failures/{id}`` lists them
(``evacuations``: each server's recovery with its steps, timings and
error).
"""

import collections

from ha_snapshot.api.handlers import recovery
from ha_snapshot.api import util
from ha_snapshot.db import host_failures as db_failures
from ha_snapshot.policies import host_failure as host_failure_policies


def host_failure_view(row, recoveries=()) -> dict:
    counts = collections.Counter(r.state for r in recoveries)
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
        'evacuation': row.evacuation,
        'evacuated_at': util.isotime(row.evacuated_at),
        'recoveries': dict(sorted(counts.items())),
    }


@util.wsgify
def list_host_failures(req):
    util.context(req).can(host_failure_policies.LIST)
    st = util.state(req)
    rows = db_failures.HostFailures(st.db).list(
        req.GET.get('host') or None, open_only=util.query_bool(req, 'open'))
    return util.json_response(req, {'host_failures': [
        host_failure_view(row, st.db.list_recoveries(host_failure=row.id))
        for row in rows]})


@util.wsgify
def show_host_failure(req):
    util.context(req).can(host_failure_policies.LIST)
    st = util.state(req)
    row = db_failures.HostFailures(st.db).get(
        util.path_item(req.environ, 'failure_id'))
    recs = st.db.list_recoveries(host_failure=row.id)
    view = host_failure_view(row, recs)
    view['evacuations'] = [recovery.recovery_view(r) for r in recs]
    return util.json_response(req, {'host_failure': view})
