"""Configuration options of ha-snapshot, one module per option group.

Nothing here reads configuration: callers build a ``ConfigOpts`` and pass it
to :func:`register_opts`, then pass it on to the code that needs it.
"""

from oslo_config import cfg

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


def register_opts(conf: cfg.ConfigOpts) -> None:
    agent.register_opts(conf)
    api.register_opts(conf)
    clients.register_opts(conf)
    database.register_opts(conf)
    host_monitor.register_opts(conf)
    hypervisor.register_opts(conf)
    image.register_opts(conf)
    malloc.register_opts(conf)
    manager.register_opts(conf)
    manager_cluster.register_opts(conf)
    policy.register_opts(conf)
    rpc_auth.register_opts(conf)
    storage.register_opts(conf)
    swift.register_opts(conf)
