"""GET /v1/managers over a real database: replicas, ages, shares."""

import time

import webob

from ha_snapshot.api import deploy
from ha_snapshot.db import api as db_api
from ha_snapshot.db import membership as db_membership
from ha_snapshot.db import migration
from ha_snapshot.manager import membership
from ha_snapshot.manager import replica_counters
from ha_snapshot.tests import base

ADMIN = {'X-User-Id': 'ada', 'X-Project-Id': 'admin', 'X-Roles': 'admin'}
MEMBER = {'X-User-Id': 'bob', 'X-Project-Id': 'p',
          'X-Roles': 'member,reader'}


class ManagersTestCase(base.TestCase):

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

    def get(self, headers=ADMIN):
        return webob.Request.blank('/v1/managers',
                                   headers=headers).get_response(self.app)

    def test_replicas_their_age_and_their_share(self):
        self.assertEqual({'managers': []}, self.get().json)
        servers = [base.new_uuid() for _ in range(200)]
        for uuid in servers:
            self.db.create_instance(uuid, 'p', host='cn1',
                                    status='protected')
        self.db.mark_instance_deleted(servers.pop())
        self.records.register('id-a', 'ctl-a', pid=11, version='1.0',
                              counters=replica_counters.zeros())
        self.records.heartbeat('id-a', dict(
            replica_counters.zeros(), deltas_merged=7, stored_bytes=4096,
            recoveries_failed=1))
        self.records.register('id-b', 'ctl-b', pid=12)
        self.records.acquire_lease('recovery:x', 'id-a', 60)
        self.records.acquire_lease('recovery:y', 'id-b', 60)
        self.records.acquire_lease('merge:z', 'id-b', 60)
        # NOTE: a replica whose last beat was 40 s ago (3 x 10 s allowed).
        db_membership.Records(
            self.db, clock=lambda: time.time() - 40).register('id-c',
                                                              'ctl-c')
        self.records.register('id-d', 'ctl-d')
        self.records.unregister('id-d')
        resp = self.get()
        self.assertEqual(200, resp.status_int, resp.text)
        got = {m['host']: m for m in resp.json['managers']}
        self.assertEqual(['ctl-a', 'ctl-b', 'ctl-c', 'ctl-d'], sorted(got))
        self.assertEqual(
            {'ctl-a': True, 'ctl-b': True, 'ctl-c': False, 'ctl-d': False},
            {h: m['alive'] for h, m in got.items()})
        expected = membership.count_owned(['ctl-a', 'ctl-b'], servers, 32)
        self.assertEqual(len(servers), sum(expected.values()))
        self.assertEqual(
            dict(expected, **{'ctl-c': 0, 'ctl-d': 0}),
            {h: m['servers'] for h, m in got.items()})
        self.assertTrue(all(m['servers'] > 0 for m in
                            (got['ctl-a'], got['ctl-b'])))
        a = got['ctl-a']
        self.assertEqual(('id-a', 11, '1.0', None),
                         (a['id'], a['pid'], a['version'], a['stopped_at']))
        self.assertEqual({'ctl-a': 1, 'ctl-b': 2, 'ctl-c': 0, 'ctl-d': 0},
                         {h: m['leases'] for h, m in got.items()})
        self.assertEqual(
            {'deltas_merged': 7, 'shipped_bytes': 0, 'stored_bytes': 4096,
             'recoveries_succeeded': 0, 'recoveries_failed': 1},
            a['counters'])
        # NOTE: a row without counters yet (never beat with them) shows
        # zeros, every name listed.
        self.assertEqual(replica_counters.zeros(), got['ctl-b']['counters'])
        self.assertLess(a['heartbeat_age'], 30)
        self.assertTrue(40 <= got['ctl-c']['heartbeat_age'] < 100,
                        got['ctl-c'])
        self.assertIsNotNone(got['ctl-d']['stopped_at'])
        self.assertTrue(a['heartbeat_at'].endswith('Z'))

    def test_admin_only(self):
        resp = self.get(MEMBER)
        self.assertEqual(403, resp.status_int)
        self.assertIn('ha_snapshot:manager:list', resp.text)
