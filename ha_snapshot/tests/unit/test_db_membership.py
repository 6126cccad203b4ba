"""Manager replicas and leases in the database (ha_snapshot.db.membership).

:class:`RecordsTests` holds the test bodies; this module runs them on
sqlite (a file shared by two Database objects, as two processes would),
tests/functional/test_db_replicas.py on real PostgreSQL and MariaDB
servers. Every time here is the database's clock: the Databases get a
Python clock stuck in 2023 that must not show anywhere.
"""

import datetime
import threading
import time

import sqlalchemy as sa

from ha_snapshot.db import membership as db_membership
from ha_snapshot.db import migration
from ha_snapshot import exception
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import test_db

# NOTE: the replicas' own clocks, wrong on purpose (see the docstring).
T0 = test_db.T0


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %.0f s waiting for %s'
                                 % (timeout, what))
        time.sleep(0.02)  # NOTE: poll interval, bounded by the deadline


class RecordsTests:
    """Bodies for every backend; mix into a base.TestCase and give
    ``new_url()``."""

    # NOTE: the database set-up of test_db's bodies, not its tests.
    make_db_conf = test_db.DatabaseTests.make_db_conf
    make_db = test_db.DatabaseTests.make_db
    protected = test_db.DatabaseTests.protected

    def new_url(self) -> str:
        raise NotImplementedError

    def setUp(self):
        super().setUp()
        self.now = T0
        self.db_url = self.new_url()
        self.db_conf, self.db = self.make_db(self.db_url)
        # NOTE: a second Database on the same database: another replica.
        _conf, self.db2 = self.make_db(self.db_url, migrate=False)
        self.a = db_membership.Records(self.db)
        self.b = db_membership.Records(self.db2)

    def by_id(self, records, dead_after=60.0) -> dict:
        return {r.id: r for r in records.replicas(dead_after)}

    # --- replicas -----------------------------------------------------------

    def test_times_come_from_the_database_clock(self):
        beat = self.a.register('m-1', 'host-a', pid=42, version='1.2')
        wall = datetime.datetime.now(datetime.timezone.utc).replace(
            tzinfo=None)
        # NOTE: the Database's own clock says 2023.
        self.assertLess(abs((wall - beat).total_seconds()), 300)
        replica = self.by_id(self.b)['m-1']
        self.assertEqual(('host-a', 42, '1.2', True, None),
                         (replica.host, replica.pid, replica.version,
                          replica.alive, replica.stopped_at))
        self.assertEqual(beat, replica.heartbeat_at)
        self.assertEqual(beat, replica.started_at)
        self.assertLess(replica.heartbeat_age, 60)

    def test_heartbeats_keep_a_replica_alive_missed_ones_kill_it(self):
        self.a.register('m-1', 'host-a')
        self.b.register('m-2', 'host-b')
        first = self.by_id(self.a)['m-1'].heartbeat_at
        later = wait_for(lambda: self.a.heartbeat('m-1') > first, 10,
                         'a later database time')
        self.assertTrue(later)
        self.assertGreater(self.by_id(self.b)['m-1'].heartbeat_at, first)
        # NOTE: m-2 stops beating; with 0.3 s allowed it dies while m-1,
        # beating, stays alive.

        def m2_dead():
            self.a.heartbeat('m-1')
            seen = self.by_id(self.b, dead_after=0.3)
            return not seen['m-2'].alive and seen['m-1'].alive
        wait_for(m2_dead, 10, 'm-2 dead and m-1 alive')
        self.assertGreater(self.by_id(self.a, 0.3)['m-2'].heartbeat_age, 0.3)

    def test_clean_stop_is_dead_at_once_and_can_come_back(self):
        self.a.register('m-1', 'host-a')
        self.a.unregister('m-1')
        replica = self.by_id(self.b, dead_after=3600)['m-1']
        self.assertFalse(replica.alive)
        self.assertIsNotNone(replica.stopped_at)
        self.assertIsNone(self.a.heartbeat('m-1'))
        self.a.register('m-1', 'host-a')
        self.assertTrue(self.by_id(self.b)['m-1'].alive)
        self.assertIsNotNone(self.a.heartbeat('m-1'))

    def test_a_restart_forgets_its_host_s_dead_incarnations_only(self):
        self.a.register('old-a', 'host-a')
        self.a.unregister('old-a')
        self.a.register('old-b', 'host-b')
        self.b.register('live-a', 'host-a')
        self.a.register('new-a', 'host-a', forget_after=60)
        self.assertEqual({'old-b', 'live-a', 'new-a'},
                         set(self.by_id(self.a)))

    def test_counters_travel_with_the_beats_and_the_stop(self):
        self.a.register('m-1', 'host-a', counters={'deltas_merged': 0})
        self.b.register('m-2', 'host-b')
        self.assertEqual({'deltas_merged': 0},
                         self.by_id(self.b)['m-1'].counters)
        self.assertEqual({}, self.by_id(self.a)['m-2'].counters)
        big = 5 << 40  # NOTE: bytes beyond 32 bits survive every backend
        self.assertIsNotNone(self.a.heartbeat(
            'm-1', {'deltas_merged': 3, 'stored_bytes': big}))
        self.assertEqual({'deltas_merged': 3, 'stored_bytes': big},
                         self.by_id(self.b)['m-1'].counters)
        # A beat without counters leaves them as they are.
        self.a.heartbeat('m-1')
        self.assertEqual(3, self.by_id(self.b)['m-1'].counters[
            'deltas_merged'])
        self.a.unregister('m-1', counters={'deltas_merged': 4,
                                           'stored_bytes': big + 1})
        replica = self.by_id(self.b, dead_after=3600)['m-1']
        self.assertEqual((False, {'deltas_merged': 4,
                                  'stored_bytes': big + 1}),
                         (replica.alive, replica.counters))
        # A stopped replica's beat writes nothing, counters included.
        self.assertIsNone(self.a.heartbeat('m-1', {'deltas_merged': 99}))
        self.assertEqual(4, self.by_id(self.b, 3600)['m-1'].counters[
            'deltas_merged'])

    def test_counters_that_are_no_counts_are_refused_or_dropped(self):
        self.a.register('m-1', 'host-a')
        for bad in ({'deltas_merged': -1}, {'deltas_merged': 1.5},
                    {'deltas_merged': True}, {'deltas_merged': '3'}):
            e = self.assertRaises(ValueError, self.a.heartbeat, 'm-1', bad)
            self.assertIn('deltas_merged', str(e))
        self.assertEqual({}, self.by_id(self.b)['m-1'].counters)
        # NOTE: rows another release (or a hand) wrote: what is no count
        # is dropped, the listing goes on.
        for text, seen in (('not json', {}), ('[1, 2]', {}),
                           ('{"a": 1, "b": -2, "c": "x", "d": true}',
                            {'a': 1})):
            self.assertEqual(seen, db_membership.decode_counters(text))

    def test_migration_adds_counters_to_the_rows_there(self):
        # NOTE: a database at the revision before the counters, with a
        # replica row written then, migrated while it runs.
        conf, db = self.make_db(self.new_url(), migrate=False)
        migration.upgrade(conf, 'a4c7e1d09b52', database=db)
        with db.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO managers (id, host, started_at, heartbeat_at) "
                "VALUES ('m-old', 'host-a', :t, :t)"),
                {'t': datetime.datetime.now(datetime.timezone.utc)
                 .replace(tzinfo=None)})
        self.assertEqual(migration.head(), migration.upgrade(
            conf, database=db))
        records = db_membership.Records(db)
        self.assertEqual({}, self.by_id(records, 3600)['m-old'].counters)
        self.assertIsNotNone(records.heartbeat('m-old', {'deltas_merged': 1}))
        self.assertEqual({'deltas_merged': 1},
                         self.by_id(records, 3600)['m-old'].counters)

    def test_held_leases_by_incarnation(self):
        self.assertEqual({}, self.a.held_leases())
        self.a.acquire_lease('recovery:1', 'm-1', 60)
        held = self.a.acquire_lease('recovery:2', 'm-1', 60)
        self.b.acquire_lease('recovery:3', 'm-2', 60)
        self.b.acquire_lease('merge:4', 'm-2', 0.2)
        self.assertEqual({'m-1': 2, 'm-2': 2}, self.b.held_leases())
        self.assertTrue(self.a.release_lease(held))
        # NOTE: an expired lease nobody took is not held any more.
        wait_for(lambda: self.b.held_leases() == {'m-1': 1, 'm-2': 1}, 10,
                 'the released and the expired lease to be left out')

    # --- leases -------------------------------------------------------------

    def test_one_of_many_racers_wins_a_new_lease_then_a_free_one(self):
        racers = (self.a, self.b) * 4
        got = test_db.race(len(racers), lambda i: racers[i].acquire_lease(
            'merge:x', 'owner-%d' % i, 60))
        errors = [g for g in got if isinstance(g, Exception)]
        self.assertEqual([], errors)
        won = [g for g in got if g is not None]
        self.assertEqual(1, len(won), got)
        self.assertEqual(1, won[0].generation)
        self.assertTrue(self.a.release_lease(won[0]))
        got = test_db.race(len(racers), lambda i: racers[i].acquire_lease(
            'merge:x', 'owner-%d' % i, 60))
        won = [g for g in got if g is not None]
        self.assertEqual(1, len(won), got)
        self.assertEqual(2, won[0].generation)
        row = self.b.get_lease('merge:x')
        self.assertEqual((won[0].owner, 2), (row.owner, row.generation))

    def test_a_held_lease_is_refused_renewed_and_released(self):
        held = self.a.acquire_lease('recovery:x', 'm-1', 60)
        self.assertIsNone(self.b.acquire_lease('recovery:x', 'm-2', 60))
        renewed = self.a.renew_lease(held, 120)
        self.assertGreater(renewed.expires_at, held.expires_at)
        self.assertEqual(held.generation, renewed.generation)
        self.assertTrue(self.a.release_lease(renewed))
        self.assertFalse(self.a.release_lease(renewed))
        e = self.assertRaises(exception.LeaseLost, self.a.renew_lease,
                              renewed, 60)
        self.assertIn('released', str(e))
        other = self.b.acquire_lease('recovery:x', 'm-2', 60)
        self.assertEqual(held.generation + 1, other.generation)

    def test_expired_lease_is_taken_over_and_fences_the_loser(self):
        uuid = self.protected()
        recovery = self.db.create_recovery(uuid, 'restart')
        old = self.a.acquire_lease('recovery:' + uuid, 'm-1', 0.3)
        self.assertEqual(1, old.generation)
        self.assertIsNone(self.b.acquire_lease('recovery:' + uuid, 'm-2', 60))
        # NOTE: the old holder still writes while nobody took over.
        self.db.update_recovery(recovery.id, state='running', step='one',
                                fence=old.fence)
        new = wait_for(lambda: self.b.acquire_lease('recovery:' + uuid,
                                                    'm-2', 60),
                       10, 'the expired lease to be taken over')
        self.assertEqual(2, new.generation)

        # The loser: every write refused, nothing changed.
        rp = test_db.make_rp(uuid, 1)
        e = self.assertRaises(exception.LeaseLost,
                              self.db.record_restore_point, rp,
                              fence=old.fence)
        self.assertIn('taken at generation 2', str(e))
        self.assertEqual([], self.db2.list_restore_points(uuid))
        instance = self.db2.get_instance(uuid)
        self.assertEqual((None, None, 0),
                         (instance.newest_restore_point_id,
                          instance.last_sequence, instance.merges))
        self.assertRaises(exception.LeaseLost, self.db.update_recovery,
                          recovery.id, step='two', fence=old.fence)
        self.assertEqual('one', self.db2.get_recovery(recovery.id).step)
        # An evacuation's move of the host, too.
        self.assertRaises(exception.LeaseLost, self.db.update_instance,
                          uuid, host='elsewhere', fence=old.fence)
        self.assertNotEqual('elsewhere', self.db2.get_instance(uuid).host)
        self.assertRaises(exception.LeaseLost, self.a.renew_lease, old, 60)
        self.assertFalse(self.a.release_lease(old))

        # The winner writes.
        self.db2.record_restore_point(rp, fence=new.fence)
        self.db2.update_recovery(recovery.id, step='two', fence=new.fence)
        self.assertEqual([rp.id], [p.id for p in
                                   self.db.list_restore_points(uuid)])
        self.assertEqual('two', self.db.get_recovery(recovery.id).step)
        self.assertEqual('m-2', self.a.get_lease('recovery:' + uuid).owner)

    def test_unknown_lease_fences_every_write(self):
        uuid = self.protected()
        ghost = db_membership.Lease('merge:' + uuid, 'm-1', 1,
                                    datetime.datetime(2026, 1, 1))
        e = self.assertRaises(exception.LeaseLost,
                              self.db.record_restore_point,
                              test_db.make_rp(uuid, 1), fence=ghost.fence)
        self.assertIn('no such lease', str(e))
        self.assertEqual([], self.db.list_restore_points(uuid))

    def test_a_takeover_waits_for_the_fenced_write_in_progress(self):
        """The fence holds the lease row until the write commits: a
        takeover cannot slip between the check and the commit."""
        uuid = self.protected()
        # NOTE: a lease of 0 s: expired at once, but nobody took it yet.
        old = self.a.acquire_lease('merge:' + uuid, 'm-1', 0)
        inside, finish = threading.Event(), threading.Event()
        taken = []

        def slow_fence(session):
            old.fence(session)
            inside.set()
            # NOTE: the write stays open until the test lets it commit.
            self.assertTrue(finish.wait(30))

        writer = threading.Thread(target=lambda: self.db.record_restore_point(
            test_db.make_rp(uuid, 1), fence=slow_fence))
        writer.start()
        self.assertTrue(inside.wait(30))

        def take():
            taken.append(self.b.acquire_lease('merge:' + uuid, 'm-2', 60))
        taker = threading.Thread(target=take)
        taker.start()
        taker.join(1.0)
        # NOTE: on a server the takeover blocks on the row lock; on sqlite
        # it waits for the write lock. Either way it has not happened yet.
        self.assertEqual([], taken)
        finish.set()
        writer.join(30)
        taker.join(30)
        self.assertEqual(2, taken[0].generation)
        self.assertEqual(1, len(self.db.list_restore_points(uuid)))


class SqliteRecordsTestCase(RecordsTests, base.TestCase):

    def new_url(self) -> str:
        return 'sqlite:///' + self.path('db-%s.sqlite' % base.new_uuid())
