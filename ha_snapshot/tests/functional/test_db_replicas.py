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

from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import database as db_fixtures
from ha_snapshot.tests.fixtures import mariadb
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
