"""Manager replicas: heartbeats, who is alive, who owns which instance.

Replicas share one sqlite file through Database objects of their own. The
ring tests move a clock of their own (``Records(clock=...)``) and beat by
hand, so "dead" is exact; the service tests beat on the real thread and
the database's clock.
"""

from ha_snapshot.db import api as db_api
from ha_snapshot.db import membership as db_membership
from ha_snapshot.db import migration
from ha_snapshot import exception
from ha_snapshot.manager import membership
from ha_snapshot.manager import replica_counters
from ha_snapshot.manager import service as service_mod
from ha_snapshot import rpc
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import test_db_membership

T0 = 1_800_000_000.0
INSTANCES = 3000


class MembershipTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.now = T0
        self.url = 'sqlite:///' + self.path('db.sqlite')
        self.conf = self.make_conf()
        db = self.database()
        migration.upgrade(self.conf, database=db)
        self.uuids = [base.new_uuid() for _ in range(INSTANCES)]

    def make_conf(self, interval=10.0, missed=3):
        return base.make_conf(
            self.store_dir, database__connection=self.url,
            manager_cluster__heartbeat_interval=interval,
            manager_cluster__dead_after_missed=missed)

    def database(self):
        db = db_api.Database(self.conf)
        self.addCleanup(db.dispose)
        return db

    def replica(self, host):
        """A replica whose thread never beats (interval 10 s) on a clock
        of the test's: beats are the test's calls to beat()."""
        db = self.database()
        records = db_membership.Records(db, clock=lambda: self.now)
        m = membership.Membership(self.conf, db, host, records=records)
        m.start()
        self.addCleanup(m.stop)
        return m

    def owners(self, m) -> dict:
        return {u: m.owner(u) for u in self.uuids}

    def test_no_owner_before_the_first_beat(self):
        m = membership.Membership(self.conf, self.database(), 'm1')
        e = self.assertRaises(exception.NoLiveManagers, m.owner,
                              self.uuids[0])
        self.assertIn('no heartbeat seen yet', str(e))

    def test_every_replica_agrees_and_the_work_is_shared(self):
        replicas = [self.replica(h) for h in ('m1', 'm2', 'm3')]
        for m in replicas:
            m.beat()
        views = [self.owners(m) for m in replicas]
        self.assertEqual(views[0], views[1])
        self.assertEqual(views[0], views[2])
        counts = membership.count_owned(['m1', 'm2', 'm3'], self.uuids, 32)
        self.assertEqual(INSTANCES, sum(counts.values()))
        for host, n in counts.items():
            # NOTE: 32 points per host spread within about +-40 %.
            self.assertGreater(n, INSTANCES * 0.2, counts)
        self.assertEqual(counts, {h: list(views[0].values()).count(h)
                                  for h in counts})
        self.assertTrue(replicas[0].owns(next(
            u for u, h in views[0].items() if h == 'm1')))

    def test_a_dead_replica_s_instances_move_the_others_stay(self):
        m1, m2, m3 = (self.replica(h) for h in ('m1', 'm2', 'm3'))
        for m in (m1, m2, m3):
            m.beat()
        before = self.owners(m1)
        # m3 stops beating (a crash: no unregister). After 20 s it is
        # still alive (3 beats of 10 s may be missed), after 31 s dead.
        self.now += 20
        for m in (m1, m2):
            m.beat()
        self.assertEqual(['m1', 'm2', 'm3'],
                         sorted(r.host for r in m1.live()))
        self.assertEqual(before, self.owners(m2))
        self.now += 11
        for m in (m1, m2):
            m.beat()
        self.assertEqual(['m1', 'm2'], sorted(r.host for r in m1.live()))
        after = self.owners(m1)
        self.assertEqual(after, self.owners(m2))
        moved = [u for u in self.uuids if before[u] != after[u]]
        orphans = [u for u in self.uuids if before[u] == 'm3']
        # Exactly the dead replica's instances move, to live replicas.
        self.assertEqual(sorted(orphans), sorted(moved))
        self.assertEqual({'m1', 'm2'}, {after[u] for u in moved})
        self.assertGreater(len(moved), INSTANCES * 0.2)
        self.assertLess(len(moved), INSTANCES * 0.5)

        # A new replica joins: only what it takes moves.
        m4 = self.replica('m4')
        m1.beat()
        joined = self.owners(m1)
        self.assertEqual(joined, self.owners(m4))
        moved = [u for u in self.uuids if after[u] != joined[u]]
        self.assertEqual({'m4'}, {joined[u] for u in moved})
        self.assertGreater(len(moved), INSTANCES * 0.15)

        # m4 stops cleanly (dead at once); m3 restarts (a new
        # incarnation of the same host) and gets its instances back.
        m4.stop()
        m3b = self.replica('m3')
        self.assertNotEqual(m3.id, m3b.id)
        m1.beat()
        self.assertEqual(before, self.owners(m1))
        self.assertEqual(['m1', 'm2', 'm3'],
                         sorted(r.host for r in m1.live()))

    def test_heartbeat_thread_and_death_by_the_database_clock(self):
        conf = self.make_conf(interval=0.05, missed=4)
        fast = [membership.Membership(conf, self.database(), h)
                for h in ('m1', 'm2')]
        for m in fast:
            m.start()
            self.addCleanup(m.stop)
        test_db_membership.wait_for(
            lambda: all(m.beats >= 3 for m in fast) and all(
                len(m.live()) == 2 for m in fast),
            30, 'three beats of each replica, each seeing both')
        fast[1].stop(unregister=False)
        test_db_membership.wait_for(
            lambda: [r.host for r in fast[0].live()] == ['m1'], 30,
            'm1 to see m2 dead after its missed beats')
        replica = {r.host: r for r in fast[0].records.replicas(0.2)}['m2']
        self.assertIsNone(replica.stopped_at)
        self.assertGreater(replica.heartbeat_age, 0.2)
        self.assertEqual('m1', fast[0].owner(self.uuids[0]))

    def test_the_manager_service_beats_and_unregisters(self):
        conf = self.make_conf(interval=0.05)
        conf.set_override('spool_dir', self.path('spool'), group='manager')
        conf.set_override('listen_notifications', False, group='manager')
        conf.set_override('host', 'manager-a', group='manager')
        svc = service_mod.ManagerService(
            conf, transport=rpc.get_transport(conf, url='fake:/'))
        svc.start()
        try:
            test_db_membership.wait_for(
                lambda: svc.membership.beats >= 2, 30, 'two heartbeats')
            records = db_membership.Records(self.database())
            replica, = records.replicas(60)
            self.assertEqual(('manager-a', svc.membership.id, True),
                             (replica.host, replica.id, replica.alive))
            self.assertEqual('manager-a', svc.membership.owner(
                self.uuids[0]))
        finally:
            svc.stop()
        replica, = records.replicas(3600)
        self.assertFalse(replica.alive)
        self.assertIsNotNone(replica.stopped_at)

    def test_counters_go_with_the_beats_and_the_clean_stop(self):
        m = self.replica('m1')
        row, = m.records.replicas(3600)
        self.assertEqual(replica_counters.zeros(), row.counters)
        m.counters.merged(1000, 300)
        m.counters.recovery_ended(succeeded=True)
        m.beat()
        row, = m.records.replicas(3600)
        self.assertEqual((1, 1000, 300, 1, 0), tuple(
            row.counters[n] for n in replica_counters.NAMES))
        m.counters.recovery_ended(succeeded=False)
        m.stop()
        row, = m.records.replicas(3600)
        self.assertEqual((False, 1), (row.alive,
                                      row.counters['recoveries_failed']))
        # The next incarnation on the host is a new series from zero.
        again = self.replica('m1')
        self.assertNotEqual(m.id, again.id)
        rows = {r.id: r for r in again.records.replicas(3600)}
        self.assertEqual(replica_counters.zeros(), rows[again.id].counters)

    def test_counters_refuse_what_is_no_count(self):
        counters = replica_counters.WorkCounters()
        self.assertRaises(KeyError, counters.add, 'merges')
        self.assertRaises(ValueError, counters.add, 'deltas_merged', -1)
        self.assertEqual(replica_counters.zeros(), counters.snapshot())
        self.assertEqual(dict(replica_counters.zeros(), deltas_merged=2),
                         replica_counters.known({'deltas_merged': 2,
                                                 'from_the_future': 7}))

    def test_a_failing_heartbeat_keeps_the_thread_and_loses_standing(self):
        conf = self.make_conf(interval=0.05, missed=4)

        class Unreachable(db_membership.Records):
            """The database stops answering after the first beat."""
            down = False

            def heartbeat(self, manager_id, counters=None):
                if self.down:
                    raise exception.DatabaseBusy(reason='test', seconds=0)
                return super().heartbeat(manager_id, counters)

        db = self.database()
        records = Unreachable(db)
        m = membership.Membership(conf, db, 'm1', records=records)
        m.start()
        self.addCleanup(m.stop)
        self.assertTrue(m.in_good_standing())
        records.down = True
        test_db_membership.wait_for(lambda: not m.in_good_standing(), 30,
                                    'm1 to lose its standing')
        self.assertTrue(m._thread.is_alive())
        beats = m.beats
        records.down = False
        test_db_membership.wait_for(
            lambda: m.beats > beats and m.in_good_standing(), 30,
            'm1 to beat again')
