"""Manager replicas and leases on real PostgreSQL and MariaDB servers.

The test bodies are those of tests/unit/test_db_membership.py: two
Database objects (two replicas) on one database, threads racing for one
lease, an expired lease taken over with a higher generation, the loser's
writes refused (LeaseLost) with nothing changed, a takeover waiting for
the fenced write in progress. The MariaDB server is started by
tests/fixtures/mariadb.py; its fixture is tested here too.
"""

import os

import sqlalchemy as sa

from ha_snapshot.db import api as db_api
from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import migration
from ha_snapshot.manager import membership
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import database as db_fixtures
from ha_snapshot.tests.fixtures import mariadb
from ha_snapshot.tests.unit import test_db
from ha_snapshot.tests.unit import test_db_membership


class PostgreSQLRecordsTestCase(test_db_membership.RecordsTests,
                                base.TestCase):

    def new_url(self) -> str:
        return self.useFixture(db_fixtures.PostgreSQLServer()).url

    def test_backend(self):
        self.assertEqual('postgresql', self.db.engine.dialect.name)


class MariaDBRecordsTestCase(test_db_membership.RecordsTests,
                             base.TestCase):

    def new_url(self) -> str:
        return self.useFixture(mariadb.MariaDBServer()).url

    def test_backend(self):
        self.assertEqual('mysql', self.db.engine.dialect.name)
        with self.db.engine.connect() as conn:
            self.assertIn('MariaDB', conn.exec_driver_sql(
                'SELECT VERSION()').scalar())
            # NOTE: heartbeats and leases need sub-second times.
            column = {c['name']: c for c in sa.inspect(conn).get_columns(
                'leases')}['expires_at']
            self.assertEqual(6, column['type'].fsp)


class MariaDBDatabaseTestCase(test_db.DatabaseTests, base.TestCase):
    """The whole database layer on MariaDB, models and migrations in
    sync there too (DATETIME(6) columns: times to the microsecond)."""

    def new_url(self) -> str:
        return self.useFixture(mariadb.MariaDBServer()).url

    def test_times_keep_microseconds(self):
        uuid = self.protected()
        taken = test_db.T0 + 1.234567
        self.db.record_restore_point(test_db.make_rp(uuid, 1,
                                                     created_at=taken))
        with self.db.engine.connect() as conn:
            for table in ('instances', 'restore_points', 'recoveries',
                          'agents'):
                for column in sa.inspect(conn).get_columns(table):
                    if isinstance(column['type'], sa.DateTime):
                        self.assertEqual(6, column['type'].fsp,
                                         '%s.%s' % (table, column['name']))
        self.assertEqual(db_engine.to_datetime(taken),
                         self.db.list_restore_points(uuid)[-1].created_at)


class MariaDBFixtureTestCase(base.TestCase):

    def test_private_server_stops_by_pid(self):
        fixture = mariadb.MariaDBServer(private=True)
        fixture.setUp()
        server, pid = fixture.server, fixture.server.pid
        self.assertIsNot(server, mariadb.shared_server())
        base_dir = server.base
        engine = sa.create_engine(fixture.url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            self.assertEqual(1, conn.exec_driver_sql('SELECT 1').scalar())
        engine.dispose()
        fixture.cleanUp()
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertFalse(os.path.exists(base_dir))

    def test_startup_failure_shows_the_server_log(self):
        server = mariadb.Server(options=['--no-such-option=1'])
        self.addCleanup(server.stop)
        e = self.assertRaises(mariadb.MariaDBUnavailable, server.start)
        self.assertIn('before accepting connections', str(e))
        self.assertIn('no-such-option', str(e))


class PostgreSQLRingTestCase(base.TestCase):
    """Three replicas beating on their threads against PostgreSQL, by the
    database's clock: one goes silent, exactly its servers move."""

    def test_a_silent_replica_s_servers_move_the_others_stay(self):
        url = self.useFixture(db_fixtures.PostgreSQLServer()).url
        conf = base.make_conf(
            self.store_dir, database__connection=url,
            manager_cluster__heartbeat_interval=0.2,
            manager_cluster__dead_after_missed=10)
        db = db_api.Database(conf)
        self.addCleanup(db.dispose)
        migration.upgrade(conf, database=db)
        replicas = []
        for host in ('ctl-a', 'ctl-b', 'ctl-c'):
            m = membership.Membership(conf, db, host)
            m.start()
            self.addCleanup(m.stop)
            replicas.append(m)
        servers = [base.new_uuid() for _ in range(1000)]

        def everyone_sees(hosts):
            return all(sorted(r.host for r in m.live()) == hosts
                       for m in replicas if m.host in hosts)
        test_db_membership.wait_for(
            lambda: everyone_sees(['ctl-a', 'ctl-b', 'ctl-c']), 30,
            'every replica to see the three')
        before = {u: replicas[0].owner(u) for u in servers}
        replicas[2].stop(unregister=False)
        test_db_membership.wait_for(
            lambda: everyone_sees(['ctl-a', 'ctl-b']), 30,
            'ctl-a and ctl-b to see ctl-c dead')
        after = {u: replicas[1].owner(u) for u in servers}
        moved = {u for u in servers if before[u] != after[u]}
        self.assertEqual({u for u in servers if before[u] == 'ctl-c'}, moved)
        self.assertTrue(100 < len(moved) < 600, len(moved))
        self.assertEqual({'ctl-a', 'ctl-b'}, set(after.values()))
