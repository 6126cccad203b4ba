"""Host failure records in the database (ha_snapshot.db.host_failures).

:class:`HostFailuresTests` holds the test bodies; this module runs them
on sqlite, tests/functional/test_db_host_failures.py on real PostgreSQL
and MariaDB servers.
"""

import datetime

from ha_snapshot.db import host_failures as db_failures
from ha_snapshot.db import membership as db_membership
from ha_snapshot import exception
from ha_snapshot import statuses
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import test_db

F = statuses.HostFailureState


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime(2027, 1, 1) + datetime.timedelta(
        seconds=seconds)


class HostFailuresTests:
    """Bodies for every backend; mix into a base.TestCase and give
    ``new_url()``."""

    make_db_conf = test_db.DatabaseTests.make_db_conf
    make_db = test_db.DatabaseTests.make_db

    def new_url(self) -> str:
        raise NotImplementedError

    def setUp(self):
        super().setUp()
        self.now = test_db.T0
        self.db_conf, self.db = self.make_db(self.new_url())
        self.failures = db_failures.HostFailures(self.db)

    def test_create_update_open_and_list(self):
        row = self.failures.create(
            'compute1', F.CONFIRMED, detected_at=at(0.25), reason='silent',
            confirmed_at=at(10.5), fencing_driver='ipmi')
        self.assertEqual(('compute1', 'confirmed', 0, None),
                         (row.host, row.state, row.fence_attempts,
                          row.closed_at))
        self.failures.update(row.id, state=F.FENCED, fenced_at=at(11.125),
                             fence_attempts=1, result='powered off')
        partition = self.failures.create('*', F.PARTITION,
                                         detected_at=at(5))
        self.assertEqual({'compute1', '*'}, set(self.failures.open()))
        got = self.failures.open()['compute1']
        self.assertEqual(('fenced', 1, 'powered off', 'ipmi', at(0.25),
                          at(11.125)),
                         (got.state, got.fence_attempts, got.result,
                          got.fencing_driver, got.detected_at,
                          got.fenced_at))
        self.failures.update(partition.id, state=F.PARTITION_ENDED,
                             closed_at=at(20))
        self.assertEqual(['compute1'], list(self.failures.open()))
        # Newest detection first.
        self.assertEqual([partition.id, row.id],
                         [r.id for r in self.failures.list()])
        self.assertEqual([partition.id],
                         [r.id for r in self.failures.list('*')])
        self.assertEqual([row.id], [r.id for r in self.failures.list(
            open_only=True)])
        self.assertEqual([partition.id],
                         [r.id for r in self.failures.list(limit=1)])

    def test_one_open_row_per_host(self):
        first = self.failures.create('c1', F.CONFIRMED, detected_at=at(0))
        e = self.assertRaises(exception.HostFailureOpen, self.failures.create,
                              'c1', F.CONFIRMED, detected_at=at(1))
        self.assertIn('c1', str(e))
        # Another host, and the same host once its row is closed.
        self.failures.create('c2', F.CONFIRMED, detected_at=at(1))
        self.failures.update(first.id, state=F.RETURNED, closed_at=at(2))
        again = self.failures.create('c1', F.CONFIRMED, detected_at=at(3))
        opened = self.failures.open()
        self.assertEqual(['c1', 'c2'], sorted(opened))
        self.assertEqual(again.id, opened['c1'].id)
        self.assertEqual(3, len(self.failures.list()))
        # Closed rows of one host do not collide with each other.
        self.failures.update(again.id, state=F.RETURNED, closed_at=at(4))
        self.assertEqual(['c2'], list(self.failures.open()))

    def test_evacuation_outcome_is_kept_apart_from_fencing(self):
        row = self.failures.create('c1', F.FENCED, detected_at=at(0),
                                   result='powered off')
        self.failures.update(row.id, state=F.EVACUATED,
                             evacuation='2 servers evacuated and restored')
        got = self.failures.get(row.id)
        self.assertEqual(('powered off', '2 servers evacuated and restored'),
                         (got.result, got.evacuation))

    def test_bad_columns_and_unknown_rows_are_named(self):
        e = self.assertRaises(exception.HaSnapshotException,
                              self.failures.create, 'c1', F.CONFIRMED,
                              detected_at=at(0), colour='red')
        self.assertIn('colour', str(e))
        e = self.assertRaises(exception.HostFailureNotFound,
                              self.failures.update, 'nope', state=F.FENCED)
        self.assertIn('nope', str(e))
        self.assertEqual([], self.failures.list())

    def test_writes_under_a_lost_lease_are_refused(self):
        records = db_membership.Records(self.db)
        lease = records.acquire_lease('leader:host-monitor', 'm-1', 60)
        row = self.failures.create('c1', F.CONFIRMED, detected_at=at(0),
                                   fence=lease.fence)
        records.release_lease(lease)
        self.assertRaises(exception.LeaseLost, self.failures.update, row.id,
                          state=F.FENCED, fence=lease.fence)
        self.assertRaises(exception.LeaseLost, self.failures.create, 'c2',
                          F.CONFIRMED, detected_at=at(0), fence=lease.fence)
        self.assertEqual([('c1', 'confirmed')],
                         [(r.host, r.state) for r in self.failures.list()])


class SqliteHostFailuresTestCase(HostFailuresTests, base.TestCase):

    def new_url(self) -> str:
        return 'sqlite:///' + self.path('db-%s.sqlite' % base.new_uuid())
