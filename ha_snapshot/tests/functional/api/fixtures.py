"""Gabbi fixtures: the API in process, over a real database and a real
manager.

Per YAML file, :class:`APIFixture` builds a sqlite database file
(:class:`PostgreSQLAPIFixture`: a database on a real PostgreSQL server)
migrated to head, a ``fake://`` oslo.messaging transport, the manager's
real RPC endpoint (Manager, RecoveryEngine with the ``restart`` action)
served on it, a recording agent (what a compute host's agent is told) and a
scripted Nova (tests/unit/fake_openstack.py) for the manager's host
lookups; then the application itself with ``auth_strategy = noauth``.
Identifiers go to the environment for the YAML (``$ENVIRON['SERVER_A']``).

Seeded servers: A (project P, two restore points, host compute-1), B
(project Q, one restore point), C (project P, no restore point yet);
NOVA_SERVER is known to Nova only (project P, host compute-1). Seeded
manager replica: MANAGER_ID on host manager-1, alive, with work counters
and one lease.
"""

import os
import shutil
import tempfile
import time

from gabbi import fixture

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.api import deploy
from ha_snapshot.api import secret
from ha_snapshot.db import api as db_api
from ha_snapshot.db import membership as db_membership
from ha_snapshot.db import migration
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot.manager import recovery as recovery_engine
from ha_snapshot.manager import replica_counters
from ha_snapshot.manager import spool as spool_mod
from ha_snapshot.recovery import restart
from ha_snapshot import rpc
from ha_snapshot.storage import objects
from ha_snapshot.storage import store as store_mod
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import agent as agent_fixture
from ha_snapshot.tests.fixtures import database as db_fixtures
from ha_snapshot.tests.unit import fake_openstack

HOST = 'compute-1'
SECRET_KEY = 'gabbi-alarm-key'
PUBLIC_ENDPOINT = 'https://cloud.example/ha-snapshot'

# NOTE: gabbi builds the intercepted application when it builds the tests,
# before any fixture runs; the application is made by the fixture and
# looked up at the first request.
_APP = {}


class LazyApp:

    def __call__(self, environ, start_response):
        return _APP['app'](environ, start_response)


def setup_app():
    return LazyApp()


def _restore_point(instance, project, number, parent=None):
    return objects.RestorePoint(
        id=base.new_uuid(), instance=instance, project=project,
        scope=project, number=number, parent=parent,
        created_at=time.time() - 60 * (3 - number), virtual_size=8 << 20,
        chunk_size=1 << 20, chunks={}, delta_sequence=number - 1,
        changed_bytes=number << 20, new_chunks=number,
        new_bytes=number << 20)


class APIFixture(fixture.GabbiFixture):
    """The API over a sqlite database file."""

    def database_url(self) -> str:
        return 'sqlite:///' + os.path.join(self.tmp, 'db.sqlite')

    def start_fixture(self):
        self.tmp = tempfile.mkdtemp(prefix='ha-api-', dir='/var/tmp')
        conf = base.make_conf(os.path.join(self.tmp, 'store'))
        conf.set_override('connection', self.database_url(),
                          group='database')
        conf.set_override('auth_strategy', 'noauth', group='api')
        conf.set_override('alarm_secret_key', SECRET_KEY, group='api')
        conf.set_override('public_endpoint', PUBLIC_ENDPOINT, group='api')
        conf.set_override('spool_dir', os.path.join(self.tmp, 'spool'),
                          group='manager')
        self.nova = fake_openstack.FakeNova()
        conf.set_override('auth_type', 'none', group='nova')
        conf.set_override('endpoint_override', self.nova.url, group='nova')
        self.conf = conf
        self.db = db_api.Database(conf)
        migration.upgrade(conf, database=self.db)
        self.transport = rpc.get_transport(conf, url='fake:///')
        self.agent = agent_fixture.RecordingAgent()
        self.servers = [rpc.get_server(self.transport, rpc.AGENT_TOPIC, HOST,
                                       [self.agent])]
        agent_api = agent_rpcapi.AgentAPI(self.transport, timeout=30)
        self.engine = recovery_engine.RecoveryEngine(
            conf, self.db, restart.RestartAction(conf, agent_api=agent_api))
        manager = manager_mod.Manager(
            conf, store_mod.RecoveryStore.from_conf(conf), self.db,
            spool_mod.Spool.from_conf(conf),
            recovery=self.engine, agent_api=agent_api)
        self.servers.append(rpc.get_server(
            self.transport, rpc.MANAGER_TOPIC, 'manager-1',
            [manager_mod.ManagerEndpoint(manager)]))
        for server in self.servers:
            server.start()
        self._seed()
        self.app = deploy.loadapp(conf, db=self.db, transport=self.transport)
        _APP['app'] = self.app

    def _seed(self):
        env = {'PROJECT_P': base.new_uuid(), 'PROJECT_Q': base.new_uuid(),
               'SERVER_A': base.new_uuid(), 'SERVER_B': base.new_uuid(),
               'SERVER_C': base.new_uuid(), 'UNKNOWN_ID': base.new_uuid(),
               'NEW_SERVER': base.new_uuid(), 'NOVA_SERVER': base.new_uuid(),
               'HOST': HOST}
        self.nova.add_server(env['NOVA_SERVER'], env['PROJECT_P'], None,
                             host=HOST, name='web-1')
        for name, project in (('SERVER_A', 'PROJECT_P'),
                              ('SERVER_B', 'PROJECT_Q'),
                              ('SERVER_C', 'PROJECT_P')):
            self.db.create_instance(env[name], env[project], host=HOST,
                                    status='protected', driver='qemu')
        a1 = _restore_point(env['SERVER_A'], env['PROJECT_P'], 1)
        a2 = _restore_point(env['SERVER_A'], env['PROJECT_P'], 2, a1.id)
        b1 = _restore_point(env['SERVER_B'], env['PROJECT_Q'], 1)
        for rp in (a1, a2, b1):
            # NOTE: a2 of an agent before RPC 1.3 (no taken_at).
            self.db.record_restore_point(
                rp, taken_at=None if rp is a2 else rp.created_at - 0.5)
        env.update(RP_A1=a1.id, RP_A2=a2.id, RP_B1=b1.id)
        env['MANAGER_ID'] = base.new_uuid()
        records = db_membership.Records(self.db)
        records.register(env['MANAGER_ID'], 'manager-1', pid=os.getpid(),
                         counters=dict(replica_counters.zeros(),
                                       deltas_merged=3, stored_bytes=1 << 20,
                                       recoveries_succeeded=1))
        records.acquire_lease('recovery:' + env['SERVER_C'],
                              env['MANAGER_ID'], 3600)
        for name in ('SERVER_A', 'SERVER_B', 'UNKNOWN_ID'):
            env['SECRET_' + name] = secret.secret_for(SECRET_KEY, env[name])
        self.seeded = env
        os.environ.update(env)

    def wait_agent(self, n: int, timeout: float = 30) -> None:
        """Until the agent was told ``n`` things (casts are asynchronous)."""
        with self.agent.cond:
            ok = self.agent.cond.wait_for(
                lambda: len(self.agent.calls) >= n, timeout)
        if not ok:
            raise AssertionError('the agent got %d calls in %s s, waited '
                                 'for %d: %s' % (len(self.agent.calls),
                                                 timeout, n,
                                                 self.agent.calls))

    def stop_fixture(self):
        _APP.pop('app', None)
        # NOTE: the manager first; running recoveries still talk to the
        # agent, which stops last.
        manager_server, agent_server = self.servers[1], self.servers[0]
        manager_server.stop()
        manager_server.wait()
        self.engine.stop()
        agent_server.stop()
        agent_server.wait()
        self.nova.stop()
        self.transport.cleanup()
        self.db.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)


class PostgreSQLAPIFixture(APIFixture):
    """The API over a fresh database on a real PostgreSQL server."""

    def database_url(self) -> str:
        self.postgresql = db_fixtures.PostgreSQLServer()
        self.postgresql.setUp()
        return self.postgresql.url

    def stop_fixture(self):
        try:
            super().stop_fixture()
        finally:
            self.postgresql.cleanUp()
