"""ha-snapshot-manager as a service: the RPC server and its workers."""

import socket

from oslo_log import log as logging

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot.manager import authz
from ha_snapshot.manager import evacuation
from ha_snapshot.manager import host_monitor
from ha_snapshot.manager import image_sweep
from ha_snapshot.manager import intake
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot.manager import membership as membership_mod
from ha_snapshot.manager import notifications
from ha_snapshot.manager import recovery as recovery_engine
from ha_snapshot.manager import spool as spool_mod
from ha_snapshot import rpc
from ha_snapshot import rpc_auth
from ha_snapshot import service
from ha_snapshot.storage import store as store_mod

LOG = logging.getLogger(__name__)


class ManagerService(service.Service):

    name = 'ha-snapshot-manager'

    def __init__(self, conf, transport=None):
        self.conf = conf
        self.transport = transport
        self.host = conf.manager.host or socket.gethostname()
        self.rpc_server = None
        self.listener = None
        self.engine = None
        self.db = None
        self.sweeper = None
        self.host_monitor = None
        self.intake_sweeper = None
        self.membership = None

    def start(self) -> None:
        conf = self.conf
        self.transport = self.transport or rpc.get_transport(conf)
        self.db = db_api.Database(conf)
        migration.check(conf, database=self.db)
        # NOTE: this replica in the managers table, beating on a thread;
        # GET /v1/managers shows it. The intake takes only the deltas of
        # the instances this replica owns (the agents send them to
        # topic.<host>); each recovery runs under a lease.
        self.membership = membership_mod.Membership(conf, self.db, self.host)
        self.membership.start()
        store = store_mod.RecoveryStore.from_conf(conf)
        keys = rpc_auth.Keys.from_conf(conf)
        agent_api = agent_rpcapi.AgentAPI(
            self.transport, timeout=conf.manager.rpc_timeout,
            signer=rpc_auth.Signer(rpc_auth.MANAGER, keys))
        # NOTE: each action takes what its constructor names: restart the
        # agent API, rebuild also the store (it exports restore points),
        # evacuate also the database (it moves the server's host).
        actions = recovery_engine.load_actions(conf, agent_api=agent_api,
                                               store=store, db=self.db)
        self.engine = recovery_engine.RecoveryEngine(
            conf, self.db, actions, membership=self.membership)
        self.manager = manager_mod.Manager(
            conf, store, self.db,
            spool_mod.Spool.from_conf(conf),
            recovery=self.engine, agent_api=agent_api,
            membership=self.membership)
        self.rpc_server = rpc.get_server(
            self.transport, rpc.MANAGER_TOPIC, self.host,
            [manager_mod.ManagerEndpoint(self.manager)],
            guard=authz.Guard.from_conf(conf, keys, self.db,
                                        self.manager._nova_server))
        self.rpc_server.start()
        # NOTE: deltas abandoned mid-way (and those of servers no longer
        # protected) leave nothing behind for longer than spool_max_age.
        self.intake_sweeper = intake.IntakeSweeper.from_conf(
            conf, self.manager.sweep)
        self.intake_sweeper.start()
        if conf.manager.listen_notifications:
            # NOTE: with [nova] credentials every host a notification
            # names is checked with Nova's API first (a forged one could
            # otherwise hand a server to another host's agent).
            self.listener = notifications.get_listener(
                rpc.get_notification_transport(conf), conf, self.db,
                agent_api, locate=(self.manager._nova_server
                                   if conf.nova.auth_type else None),
                recovery=self.engine)
            self.listener.start()
        if image_sweep.wanted(conf):
            self.sweeper = image_sweep.ImageSweeper(
                conf, self.db, membership=self.membership)
            self.sweeper.start()
        if conf.host_monitor.enabled:
            # NOTE: one replica at a time watches the compute hosts
            # (leader:host-monitor); a fencing driver that cannot load
            # stops the start here, with its name.
            self.host_monitor = host_monitor.HostMonitor(
                conf, self.db, membership=self.membership,
                evacuation=(evacuation.HostEvacuation(conf, self.db,
                                                      self.engine)
                            if conf.host_monitor.evacuate else None))
            self.host_monitor.start()
        resumed = self.engine.resume()
        # NOTE: recoveries whose runner died (another replica, its lease
        # expired) are resumed by their instance's owner.
        self.engine.start_takeover(
            conf.manager_cluster.heartbeat_interval)
        LOG.info('Manager %s serving %s (store %s); %d recoveries resumed',
                 self.host, rpc.MANAGER_TOPIC, store.driver.describe(),
                 resumed)

    def stop(self) -> None:
        if self.host_monitor is not None:
            self.host_monitor.stop()
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.intake_sweeper is not None:
            self.intake_sweeper.stop()
        if self.listener is not None:
            self.listener.stop()
            self.listener.wait()
        if self.rpc_server is not None:
            self.rpc_server.stop()
            self.rpc_server.wait()
        if self.engine is not None:
            self.engine.stop()
        if self.membership is not None:
            self.membership.stop()
        if self.db is not None:
            self.db.dispose()
