"""GET /v1/host-failures over a real database (admin, read-only)."""

import webob

from ha_snapshot.api import deploy
from ha_snapshot.db import api as db_api
from ha_snapshot.db import host_failures as db_failures
from ha_snapshot.db import migration
from ha_snapshot.tests import base

ADMIN = {'X-User-Id': 'ada', 'X-Project-Id': 'admin', 'X-Roles': 'admin'}
MEMBER = {'X-User-Id': 'bob', 'X-Project-Id': 'p',
          'X-Roles': 'member,reader'}
T0 = 1_800_000_000.0


class HostFailuresTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        conf = base.make_conf(
            self.store_dir,
            database__connection='sqlite:///' + self.path('db.sqlite'))
        self.db = db_api.Database(conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(conf, database=self.db)
        self.app = deploy.loadapp(conf, db=self.db, manager_api=object())
        self.failures = db_failures.HostFailures(self.db)

    def get(self, query='', headers=ADMIN, method='GET'):
        return webob.Request.blank('/v1/host-failures' + query,
                                   headers=headers,
                                   method=method).get_response(self.app)

    def at(self, seconds):
        import datetime
        return datetime.datetime.fromtimestamp(
            T0 + seconds, datetime.timezone.utc).replace(tzinfo=None)

    def test_rows_newest_first_filtered_by_host_and_open(self):
        self.assertEqual({'host_failures': []}, self.get().json)
        old = self.failures.create('compute1', 'confirmed',
                                   detected_at=self.at(0), reason='old')
        self.failures.update(old.id, state='returned', closed_at=self.at(50))
        new = self.failures.create(
            'compute1', 'confirmed', detected_at=self.at(100),
            confirmed_at=self.at(110), fencing_driver='nova-force-down')
        self.failures.update(new.id, state='fenced', fenced_at=self.at(111),
                             fence_attempts=1, result='forced down')
        self.failures.create('*', 'partition', detected_at=self.at(60),
                             reason='3 of 3 silent')
        resp = self.get()
        self.assertEqual(200, resp.status_int, resp.text)
        rows = resp.json['host_failures']
        self.assertEqual([new.id, None, old.id],
                         [r['id'] if r['host'] != '*' else None
                          for r in rows])
        first = rows[0]
        self.assertEqual(
            ('compute1', 'fenced', 'nova-force-down', 1, 'forced down',
             None, None),
            (first['host'], first['state'], first['fencing_driver'],
             first['fence_attempts'], first['result'], first['error'],
             first['closed_at']))
        self.assertEqual('2027-01-15T08:01:51.000000Z', first['fenced_at'])
        self.assertEqual([new.id, old.id], [
            r['id'] for r in self.get('?host=compute1').json[
                'host_failures']])
        self.assertEqual(['compute1', '*'], [
            r['host'] for r in self.get('?open=1').json['host_failures']])
        bad = self.get('?open=maybe')
        self.assertEqual(400, bad.status_int)
        self.assertIn('open', bad.text)

    def test_admin_only_and_read_only(self):
        resp = self.get(headers=MEMBER)
        self.assertEqual(403, resp.status_int)
        self.assertIn('ha_snapshot:host_failure:list', resp.text)
        resp = self.get(method='DELETE')
        self.assertEqual(405, resp.status_int)

    def test_show_lists_the_evacuations_and_counts_them(self):
        failure = self.failures.create('compute1', 'evacuating',
                                       detected_at=self.at(0),
                                       result='forced down',
                                       evacuation='3 protected servers')
        recs = []
        for n in range(3):
            uuid = base.new_uuid()
            self.db.create_instance(uuid, 'p', host='compute1',
                                    status='protected')
            recs.append(self.db.create_recovery(
                uuid, 'evacuate', reason='host compute1 failed',
                host_failure_id=failure.id))
        self.db.update_recovery(recs[0].id, state='running', step='x')
        self.db.update_recovery(recs[0].id, state='succeeded', step='done')
        # A recovery of no host failure is not counted.
        self.db.create_recovery(recs[1].instance_uuid, 'restart')
        [row] = self.get().json['host_failures']
        self.assertEqual({'requested': 2, 'succeeded': 1}, row['recoveries'])
        self.assertIsNone(row['evacuated_at'])
        self.assertEqual(('forced down', '3 protected servers'),
                         (row['result'], row['evacuation']))
        resp = self.get('/' + failure.id)
        self.assertEqual(200, resp.status_int, resp.text)
        shown = resp.json['host_failure']
        self.assertEqual([r.id for r in recs],
                         [e['id'] for e in shown['evacuations']])
        self.assertEqual({failure.id}, {e['host_failure_id']
                                        for e in shown['evacuations']})
        self.assertEqual(('succeeded', 'done'),
                         (shown['evacuations'][0]['state'],
                          shown['evacuations'][0]['step']))
        missing = self.get('/' + base.new_uuid())
        self.assertEqual(404, missing.status_int)
        self.assertIn('No host failure', missing.text)
        self.assertEqual(403, self.get('/' + failure.id,
                                       headers=MEMBER).status_int)
