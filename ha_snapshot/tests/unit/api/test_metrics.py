"""/metrics over a real database: counters survive retention."""

import time

import webob

from ha_snapshot.api import deploy
from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot.storage import objects
from ha_snapshot.tests import base

ADMIN = {'X-User-Id': 'ada', 'X-Project-Id': 'admin', 'X-Roles': 'admin'}


def _rp(instance, number, changed, new):
    return objects.RestorePoint(
        id=base.new_uuid(), instance=instance, project='p', scope='p',
        number=number, parent=None, created_at=time.time() - 30,
        virtual_size=1 << 20, chunk_size=1 << 16, chunks={},
        delta_sequence=number, changed_bytes=changed, new_chunks=1,
        new_bytes=new)


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
                          'ha_snapshot_recoveries_total': 0},
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
                          'ha_snapshot_recoveries_total': 0}, got)
