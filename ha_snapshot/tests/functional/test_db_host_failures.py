"""Host failure records on real PostgreSQL and MariaDB servers (the
bodies of tests/unit/test_db_host_failures.py)."""

from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import database as db_fixtures
from ha_snapshot.tests.fixtures import mariadb
from ha_snapshot.tests.unit import test_db_host_failures


class PostgreSQLHostFailuresTestCase(
        test_db_host_failures.HostFailuresTests, base.TestCase):

    def new_url(self) -> str:
        return self.useFixture(db_fixtures.PostgreSQLServer()).url

    def test_backend(self):
        self.assertEqual('postgresql', self.db.engine.dialect.name)


class MariaDBHostFailuresTestCase(
        test_db_host_failures.HostFailuresTests, base.TestCase):

    def new_url(self) -> str:
        return self.useFixture(mariadb.MariaDBServer()).url

    def test_backend(self):
        self.assertEqual('mysql', self.db.engine.dialect.name)
