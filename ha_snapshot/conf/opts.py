"""Entry point for oslo-config-generator (``oslo.config.opts``)."""

from ha_snapshot.conf import api
from ha_snapshot.conf import clients
from ha_snapshot.conf import database
from ha_snapshot.conf import host_monitor
from ha_snapshot.conf import hypervisor
from ha_snapshot.conf import image
from ha_snapshot.conf import manager
from ha_snapshot.conf import manager_cluster
from ha_snapshot.conf import policy
from ha_snapshot.conf import rpc_auth
from ha_snapshot.conf import storage
from ha_snapshot.conf import swift


def list_opts():
    groups = {}
    for module in (api, clients, database, host_monitor,
                   hypervisor, image, manager,
                   manager_cluster, policy, rpc_auth, storage, swift):
        groups.update(module.list_opts())
    return [(group, opts) for group, opts in groups.items()]
