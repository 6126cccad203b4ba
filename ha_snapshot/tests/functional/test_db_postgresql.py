"""The database layer on a real PostgreSQL server started on loopback.

The test bodies are the sqlite ones (tests/unit/test_db.py); each test gets
a fresh database on the server of this test process.
"""

import os

from ha_snapshot.conf import database as db_conf
from ha_snapshot.db import migration
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import database as db_fixtures
from ha_snapshot.tests.unit import test_db


class PostgreSQLDatabaseTestCase(test_db.DatabaseTests, base.TestCase):

    def new_url(self) -> str:
        return self.useFixture(db_fixtures.PostgreSQLServer()).url

    def test_backend_is_postgresql(self):
        self.assertEqual('postgresql', self.db.engine.dialect.name)
        with self.db.engine.connect() as conn:
            self.assertIn('PostgreSQL', conn.exec_driver_sql(
                'SELECT version()').scalar())


class PostgreSQLServerTestCase(base.TestCase):

    def conf_for(self, url):
        conf = base.make_conf(self.store_dir)
        db_conf.register_opts(conf)
        conf.set_override('connection', url, group='database')
        return conf

    def test_each_test_database_is_fresh_and_separate(self):
        a = self.useFixture(db_fixtures.PostgreSQLServer())
        b = self.useFixture(db_fixtures.PostgreSQLServer())
        self.assertNotEqual(a.url, b.url)
        self.assertIs(a.cluster, b.cluster)
        self.assertEqual(migration.head(),
                         migration.upgrade(self.conf_for(a.url)))
        self.assertIsNone(migration.version(self.conf_for(b.url)))

    def test_private_server_stops_by_pid(self):
        fixture = db_fixtures.PostgreSQLServer(private=True)
        fixture.setUp()
        cluster, pid = fixture.cluster, fixture.cluster.pid
        self.assertIsNot(cluster, db_fixtures.shared_cluster())
        base_dir = cluster.base
        self.assertTrue(os.path.isdir(base_dir))
        fixture.cleanUp()
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertFalse(os.path.exists(base_dir))

    def test_missing_binaries_name_the_package(self):
        e = self.assertRaises(db_fixtures.PostgreSQLUnavailable,
                              db_fixtures.Cluster, self.path('no-such-bin'))
        self.assertIn('install the Debian package "postgresql"', str(e))
        self.assertIn('apt-get install -y postgresql', str(e))

    def test_startup_failure_shows_the_server_log(self):
        cluster = db_fixtures.Cluster(settings={'shared_buffers': 'lots'})
        self.addCleanup(cluster.stop)
        e = self.assertRaises(db_fixtures.PostgreSQLUnavailable,
                              cluster.start)
        self.assertIn('before accepting connections', str(e))
        self.assertIn('server log:', str(e))
        self.assertIn('shared_buffers', str(e))
