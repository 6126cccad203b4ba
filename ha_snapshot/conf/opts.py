"""Entry point for oslo-config-generator (``oslo.config.opts``)."""

from ha_snapshot.conf import agent
from ha_snapshot.conf import api
from ha_snapshot.conf import clients
from ha_snapshot.conf import database
from ha_snapshot.conf import host_monitor
from ha_snapshot.conf import hypervisor
from ha_snapshot.conf import image
from ha_snapshot.conf import malloc
from ha_snapshot.conf import manager
from ha_snapshot.conf import manager_cluster
from ha_snapshot.conf import policy
from ha_snapshot.conf import rpc_auth
from ha_snapshot.conf import storage
from ha_snapshot.conf import swift


def list_opts():
    # NOTE: merged by group name: [agent] has options in two modules.
    groups, objects = {}, {}
    for module in (agent, api, clients, database, host_monitor,
                   hypervisor, image, malloc, manager,
                   manager_cluster, policy, rpc_auth, storage, swift):
        for group, opts in module.list_opts().items():
            objects.setdefault(group.name, group)
            groups.setdefault(group.name, []).extend(opts)
    return [(objects[name], opts) for name, opts in groups.items()]
