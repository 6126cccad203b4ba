"""/v1/managers: the manager replicas sharing the database (admin).

Read from the database at each request (manager.membership.survey): every
recorded incarnation of a replica, its heartbeat age by the database's
clock, alive or dead by ``[manager_cluster]`` (the API must use the
managers' values), how many protected servers it owns on the hash ring
over the live replicas' hosts (what the replicas themselves compute after
their next heartbeat), the leases it holds, and its work counters since
it registered as of its last heartbeat.
"""

from ha_snapshot.api import util
from ha_snapshot.manager import membership
from ha_snapshot.policies import manager as manager_policies


def manager_view(standing: membership.Standing) -> dict:
    replica = standing.replica
    return {
        'id': replica.id,
        'host': replica.host,
        'pid': replica.pid,
        'version': replica.version,
        'alive': replica.alive,
        'heartbeat_age': round(replica.heartbeat_age, 3),
        'heartbeat_at': util.isotime(replica.heartbeat_at),
        'started_at': util.isotime(replica.started_at),
        'stopped_at': util.isotime(replica.stopped_at),
        'servers': standing.servers,
        'leases': standing.leases,
        'counters': dict(standing.counters),
    }


@util.wsgify
def list_managers(req):
    util.context(req).can(manager_policies.LIST)
    st = util.state(req)
    return util.json_response(req, {'managers': [
        manager_view(s) for s in membership.survey(st.conf, st.db)]})
