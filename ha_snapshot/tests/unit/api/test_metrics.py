"""/metrics over a real database: counters survive retention; the
figures of each manager replica."""

import time

from prometheus_client import parser as text_parser
import webob

from ha_snapshot.api import deploy
from ha_snapshot.db import api as db_api
from ha_snapshot.db import host_failures as db_failures
from ha_snapshot.db import membership as db_membership
from ha_snapshot.db import migration
from ha_snapshot.manager import membership
from ha_snapshot.manager import replica_counters
from ha_snapshot.storage import objects
from ha_snapshot.tests import base

ADMIN = {'X-User-Id': 'ada', 'X-Project-Id': 'admin', 'X-Roles': 'admin'}


def _rp(instance, number, changed, new, consistency='crash', age=30):
    return objects.RestorePoint(
        id=base.new_uuid(), instance=instance, project='p', scope='p',
        number=number, parent=None, created_at=time.time() - age,
        virtual_size=1 << 20, chunk_size=1 << 16, chunks={},
        delta_sequence=number, changed_bytes=changed, new_chunks=1,
        new_bytes=new, consistency=consistency)


class MetricsTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        conf = base.make_conf(self.store_dir, database__connection=(
            'sqlite:///' + self.path('db.sqlite')))
        self.db = db_api.Database(conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(conf, database=self.db)
        self.app = deploy.loadapp(conf, db=self.db, manager_api=object())
        self.inst = base.new_uuid()
        self.db.create_instance(self.inst, 'p', host='h', status='protected')

    def metrics(self) -> dict:
        resp = webob.Request.blank('/metrics', headers=ADMIN).get_response(
            self.app)
        self.assertEqual(200, resp.status_int, resp.text)
        out = {}
        for line in resp.text.splitlines():
            if line and not line.startswith('#') and self.inst in line:
                name, value = line.split('{')[0], line.rsplit(' ', 1)[1]
                if 'consistency="' in line:
                    name += ':' + line.split('consistency="')[1].split(
                        '"')[0]
                out[name] = float(value)
        return out

    def test_counters_and_gauges(self):
        self.assertEqual({'ha_snapshot_restore_points': 0,
                          'ha_snapshot_restore_point_changed_bytes': 0,
                          'ha_snapshot_restore_point_new_bytes': 0,
                          'ha_snapshot_merges_total': 0,
                          'ha_snapshot_shipped_bytes_total': 0,
                          'ha_snapshot_stored_bytes_total': 0,
                          'ha_snapshot_recovery_attempts': 0,
                          'ha_snapshot_recoveries_total': 0,
                          'ha_snapshot_restore_points_by_consistency:crash':
                          0,
                          'ha_snapshot_restore_points_by_consistency:'
                          'filesystem': 0,
                          'ha_snapshot_restore_points_with_memory': 0},
                         self.metrics())
        rps = [_rp(self.inst, n, 1000 * n, 100 * n) for n in (1, 2, 3)]
        for rp in rps:
            self.db.record_restore_point(rp)
        # A replayed recording counts once.
        self.db.record_restore_point(rps[2])
        self.db.delete_restore_points([rps[0].id])
        got = self.metrics()
        rpo = got.pop('ha_snapshot_rpo_seconds')
        self.assertTrue(25 <= rpo <= 120, rpo)
        self.assertEqual({'ha_snapshot_restore_points': 2,
                          'ha_snapshot_restore_point_changed_bytes': 5000,
                          'ha_snapshot_restore_point_new_bytes': 500,
                          'ha_snapshot_merges_total': 3,
                          'ha_snapshot_shipped_bytes_total': 6000,
                          'ha_snapshot_stored_bytes_total': 600,
                          'ha_snapshot_recovery_attempts': 0,
                          'ha_snapshot_recoveries_total': 0,
                          'ha_snapshot_restore_points_by_consistency:crash':
                          2,
                          'ha_snapshot_restore_points_by_consistency:'
                          'filesystem': 0,
                          'ha_snapshot_restore_points_with_memory': 0}, got)

    def test_points_with_memory(self):
        rps = [_rp(self.inst, n, 10, 1) for n in (1, 2, 3)]
        for rp in rps:
            self.db.record_restore_point(rp)
        self.assertTrue(self.db.set_memory_state(rps[1].id))
        self.assertTrue(self.db.set_memory_state(rps[2].id))
        self.assertFalse(self.db.set_memory_state(base.new_uuid()))
        self.assertEqual(
            2, self.metrics()['ha_snapshot_restore_points_with_memory'])
        self.assertEqual([False, True, True], [
            p.memory_state for p in self.db.list_restore_points(self.inst)])
        # Retention removes a point: it no longer counts.
        self.db.delete_restore_points([rps[1].id])
        self.assertEqual(
            1, self.metrics()['ha_snapshot_restore_points_with_memory'])

    def test_points_by_consistency(self):
        for n, kind, age in ((1, 'filesystem', 300), (2, 'crash', 200),
                             (3, 'filesystem', 100), (4, 'crash', 10)):
            self.db.record_restore_point(_rp(self.inst, n, 10, 1, kind,
                                             age))
        got = self.metrics()
        self.assertEqual(
            (2, 2), (got['ha_snapshot_restore_points_by_consistency:crash'],
                     got['ha_snapshot_restore_points_by_consistency:'
                         'filesystem']))
        # The newest application-consistent point's age, not the newest's.
        age = got['ha_snapshot_app_consistent_age_seconds']
        self.assertTrue(100 <= age <= 160, age)
        self.assertTrue(10 <= got['ha_snapshot_rpo_seconds'] <= 70)


class ReplicaMetricsTestCase(base.TestCase):
    """The figures of each manager replica, read from its managers row,
    the leases and the ring at the scrape."""

    def setUp(self):
        super().setUp()
        conf = base.make_conf(
            self.store_dir,
            database__connection='sqlite:///' + self.path('db.sqlite'),
            manager_cluster__heartbeat_interval=10.0,
            manager_cluster__dead_after_missed=3)
        self.db = db_api.Database(conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(conf, database=self.db)
        self.app = deploy.loadapp(conf, db=self.db, manager_api=object())
        self.records = db_membership.Records(self.db)

    def scrape(self) -> dict:
        """(metric sample name, host[, outcome]) -> value, of the
        ha_snapshot_manager_* families, parsed as Prometheus does."""
        resp = webob.Request.blank('/metrics', headers=ADMIN).get_response(
            self.app)
        self.assertEqual(200, resp.status_int, resp.text)
        out = {}
        for family in text_parser.text_string_to_metric_families(resp.text):
            if not family.name.startswith('ha_snapshot_manager_'):
                continue
            for sample in family.samples:
                labels = dict(sample.labels)
                key = (sample.name, labels.pop('host'))
                self.assertEqual(self.ids[key[1]], labels.pop('manager'))
                if 'outcome' in labels:
                    key += (labels.pop('outcome'),)
                self.assertEqual({}, labels, sample)
                out[key] = sample.value
        return out

    def test_each_replica_up_age_share_leases_and_work(self):
        servers = [base.new_uuid() for _ in range(150)]
        for uuid in servers:
            self.db.create_instance(uuid, 'p', host='cn1',
                                    status='protected')
        self.ids = {'ctl-a': 'id-a', 'ctl-b': 'id-b', 'ctl-c': 'id-c',
                    'ctl-d': 'id-d'}
        before = time.time()
        self.records.register('id-a', 'ctl-a', counters=dict(
            replica_counters.zeros(), deltas_merged=12,
            shipped_bytes=5 << 30, stored_bytes=3 << 20,
            recoveries_succeeded=2, recoveries_failed=1))
        self.records.register('id-b', 'ctl-b')
        # NOTE: a replica whose last beat was 40 s ago (3 x 10 s allowed),
        # and one stopped cleanly: both dead, their totals still shown.
        db_membership.Records(
            self.db, clock=lambda: time.time() - 40).register(
                'id-c', 'ctl-c', counters=dict(replica_counters.zeros(),
                                               deltas_merged=4))
        self.records.register('id-d', 'ctl-d')
        self.records.unregister('id-d', counters=dict(
            replica_counters.zeros(), recoveries_succeeded=5))
        self.records.acquire_lease('recovery:1', 'id-b', 60)
        self.records.acquire_lease('recovery:2', 'id-c', 60)
        got = self.scrape()

        def each(name):
            return {h: got[(name, h)] for h in sorted(self.ids)}
        self.assertEqual({'ctl-a': 1, 'ctl-b': 1, 'ctl-c': 0, 'ctl-d': 0},
                         each('ha_snapshot_manager_up'))
        owned = membership.count_owned(['ctl-a', 'ctl-b'], servers, 32)
        self.assertEqual(dict(owned, **{'ctl-c': 0, 'ctl-d': 0}),
                         each('ha_snapshot_manager_instances'))
        self.assertEqual(len(servers), sum(
            each('ha_snapshot_manager_instances').values()))
        # NOTE: the dead replica's lease is held until it expires: it is
        # what keeps its recovery from being taken over.
        self.assertEqual({'ctl-a': 0, 'ctl-b': 1, 'ctl-c': 1, 'ctl-d': 0},
                         each('ha_snapshot_manager_leases'))
        ages = each('ha_snapshot_manager_heartbeat_age_seconds')
        self.assertLess(ages['ctl-a'], 30)
        self.assertTrue(40 <= ages['ctl-c'] < 100, ages)
        started = got[('ha_snapshot_manager_start_time_seconds', 'ctl-a')]
        self.assertTrue(before - 60 < started < time.time() + 60, started)
        self.assertEqual({'ctl-a': 12, 'ctl-b': 0, 'ctl-c': 4, 'ctl-d': 0},
                         each('ha_snapshot_manager_deltas_merged_total'))
        self.assertEqual(5 << 30, got[
            ('ha_snapshot_manager_shipped_bytes_total', 'ctl-a')])
        self.assertEqual(3 << 20, got[
            ('ha_snapshot_manager_stored_bytes_total', 'ctl-a')])
        self.assertEqual(
            {('ctl-a', 'succeeded'): 2, ('ctl-a', 'failed'): 1,
             ('ctl-d', 'succeeded'): 5, ('ctl-d', 'failed'): 0},
            {k[1:]: v for k, v in got.items()
             if k[0] == 'ha_snapshot_manager_recoveries_total'
             and k[1] in ('ctl-a', 'ctl-d')})

    def test_no_replica_no_series(self):
        self.ids = {}
        self.assertEqual({}, self.scrape())


class HostFailureMetricsTestCase(MetricsTestCase):

    def families(self) -> dict:
        resp = webob.Request.blank('/metrics', headers=ADMIN).get_response(
            self.app)
        self.assertEqual(200, resp.status_int, resp.text)
        out = {}
        for family in text_parser.text_string_to_metric_families(resp.text):
            if family.name.startswith('ha_snapshot_host_'):
                for sample in family.samples:
                    out[(sample.name,) + tuple(sorted(
                        sample.labels.values()))] = sample.value
        return out

    def test_open_failures_and_evacuations_by_state(self):
        failures = db_failures.HostFailures(self.db)
        got = self.families()
        self.assertEqual(0, got[('ha_snapshot_host_evacuations_total',
                                 'succeeded')])
        self.assertNotIn('ha_snapshot_host_failures_open',
                         {k[0] for k in got})
        now = self.db._now()
        row = failures.create('compute1', 'evacuating', detected_at=now)
        closed = failures.create('compute3', 'returned', detected_at=now)
        failures.update(closed.id, closed_at=now)
        rec = self.db.create_recovery(self.inst, 'evacuate',
                                      host_failure_id=row.id)
        self.db.update_recovery(rec.id, state='running')
        self.db.create_recovery(self.inst, 'restart')
        got = self.families()
        self.assertEqual(1, got[('ha_snapshot_host_failures_open',
                                 'compute1', 'evacuating')])
        self.assertEqual(1, sum(v for k, v in got.items()
                                if k[0] == 'ha_snapshot_host_failures_open'))
        self.assertEqual((1, 0), (
            got[('ha_snapshot_host_evacuations_total', 'running')],
            got[('ha_snapshot_host_evacuations_total', 'requested')]))
