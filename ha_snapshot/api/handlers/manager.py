"""/v1/managers: the manager replicas sharing the database (admin).

Read from the database at each request: every recorded incarnation of a
replica, its heartbeat age by the database's clock, alive or dead by
``[manager_cluster]`` (the API must use the managers' values), and how
many protected servers it owns on the hash ring over the live replicas'
hosts: what the replicas themselves compute after their next heartbeat.
"""

from ha_snapshot.api import util
from ha_snapshot.conf import manager_cluster as cluster_conf
from ha_snapshot.db import membership as db_membership
from ha_snapshot.manager import membership
from ha_snapshot.policies import manager as manager_policies


def manager_view(replica, owned: dict) -> dict:
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
        'servers': owned.get(replica.host, 0) if replica.alive else 0,
    }


@util.wsgify
def list_managers(req):
    util.context(req).can(manager_policies.LIST)
    st = util.state(req)
    cluster_conf.register_opts(st.conf)
    replicas = db_membership.Records(st.db).replicas(
        membership.dead_after(st.conf))
    live = sorted({r.host for r in replicas if r.alive})
    servers = [row.uuid for row in st.db.list_instances()]
    owned = membership.count_owned(
        live, servers, st.conf.manager_cluster.hash_partitions)
    return util.json_response(req, {'managers': [
        manager_view(r, owned) for r in replicas]})
