"""Recovery images of deleted servers, swept from a scripted Glance.

The sweep runs on a real sqlite database; the leader tests run two
replicas (Membership + ImageSweeper each, their own Database) on one
file, on a clock of the test's.
"""

import logging

import fixtures

from ha_snapshot.db import api as db_api
from ha_snapshot.db import membership as db_membership
from ha_snapshot.db import migration
from ha_snapshot.manager import image_sweep
from ha_snapshot.manager import membership
from ha_snapshot.openstack import images
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import fake_openstack


class _SweepBase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.glance = fake_openstack.FakeGlance()
        self.addCleanup(self.glance.stop)
        self.conf = base.make_conf(self.store_dir)
        self.conf.set_override(
            'connection', 'sqlite:///' + self.path('db.sqlite'),
            group='database')
        self.conf.set_override('auth_type', 'none', group='glance')
        self.conf.set_override('endpoint_override', self.glance.url,
                               group='glance')
        self.db = db_api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(self.conf, database=self.db)
        self.sweeper = image_sweep.ImageSweeper(self.conf, self.db)

    def recovery_image(self, instance, **overrides):
        props = {'tags': [images.TAG, images.instance_tag(instance)],
                 images.PROP_INSTANCE: instance, 'visibility': 'private'}
        props.update(overrides)
        return self.glance.add_image(base.new_uuid(), **props)['id']

    def instance(self, status):
        uuid = base.new_uuid()
        self.db.create_instance(uuid, 'p1', host='h1', status=status)
        return uuid


class ImageSweepTestCase(_SweepBase):

    def test_only_deleted_instances_lose_their_images(self):
        gone = self.instance('protected')
        self.db.mark_instance_deleted(gone)
        kept = self.instance('protected')
        failed = self.instance('failed')
        unknown = base.new_uuid()
        doomed = [self.recovery_image(gone), self.recovery_image(gone)]
        others = [self.recovery_image(kept), self.recovery_image(failed),
                  self.recovery_image(unknown),
                  # NOTE: names a deleted instance but lacks its tag: not
                  # one of ours.
                  self.recovery_image(gone, tags=[images.TAG]),
                  self.glance.add_image(base.new_uuid())['id']]
        self.assertEqual(sorted(doomed), sorted(self.sweeper.sweep()))
        live = {i['id'] for i in self.glance.live()}
        self.assertEqual(set(others), live)
        # Nothing left to do: a second sweep deletes nothing.
        self.assertEqual([], self.sweeper.sweep())

    def test_refused_delete_is_tried_at_the_next_sweep(self):
        gone = self.instance('protected')
        self.db.mark_instance_deleted(gone)
        image = self.recovery_image(gone)
        self.glance.delete_fail.append(500)
        with self.assertLogs('ha_snapshot.openstack.images', 'WARNING'):
            self.assertEqual([], self.sweeper.sweep())
        self.assertIn(image, {i['id'] for i in self.glance.live()})
        self.assertEqual([image], self.sweeper.sweep())

    def test_glance_down_is_logged_and_the_thread_goes_on(self):
        log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        gone = self.instance('protected')
        self.db.mark_instance_deleted(gone)
        image = self.recovery_image(gone)
        self.conf.set_override('image_sweep_interval', 1, group='recovery')
        url = self.glance.url
        self.conf.set_override('endpoint_override', 'http://127.0.0.1:9',
                               group='glance')
        self.sweeper.start()
        self.addCleanup(self.sweeper.stop)
        base.wait_for(lambda: 'Sweep of recovery images failed' in
                      log.output, 30, 'a failed sweep logged')
        self.conf.set_override('endpoint_override', url, group='glance')
        base.wait_for(lambda: image not in {
            i['id'] for i in self.glance.live()}, 30,
            'the image deleted by a later sweep')
        self.sweeper.stop()
        self.assertFalse(self.sweeper._thread.is_alive())

    def test_wanted_only_where_a_rebuild_could_upload(self):
        self.assertTrue(image_sweep.wanted(self.conf))
        self.conf.set_override('actions', {'qemu': 'restart'},
                               group='recovery')
        self.assertFalse(image_sweep.wanted(self.conf))
        self.conf.set_override('action', 'rebuild', group='recovery')
        self.assertTrue(image_sweep.wanted(self.conf))
        self.conf.set_override('image_sweep_interval', 0, group='recovery')
        self.assertFalse(image_sweep.wanted(self.conf))
        self.conf.clear_override('image_sweep_interval', group='recovery')
        self.conf.clear_override('auth_type', group='glance')
        self.assertFalse(image_sweep.wanted(self.conf))

    def test_images_of_a_recovery_in_progress_stay(self):
        # Nova deleted the server while it was being rebuilt: the
        # recovery owns its upload until it ends.
        gone = self.instance('protected')
        rec = self.db.create_recovery(gone, 'rebuild')
        self.db.update_recovery(rec.id, state='running', step='upload-image')
        self.db.mark_instance_deleted(gone)
        image = self.recovery_image(gone, **{images.PROP_RECOVERY: rec.id})
        legacy = self.recovery_image(gone)
        with self.assertLogs('ha_snapshot.manager.image_sweep', 'INFO') as cm:
            self.assertEqual([], self.sweeper.sweep())
        self.assertIn('recovery %s is in progress' % rec.id, cm.output[0])
        self.db.update_recovery(rec.id, state='failed', error='server gone')
        self.assertEqual(sorted([image, legacy]), sorted(self.sweeper.sweep()))


T0 = 1_800_000_000.0


class SweepLeaderTestCase(_SweepBase):
    """Two replicas on one sqlite file: one sweeps per round."""

    def setUp(self):
        super().setUp()
        self.now = T0
        self.conf.set_override('heartbeat_interval', 60,
                               group='manager_cluster')
        self.conf.set_override('image_sweep_interval', 600,
                               group='recovery')
        self.conf.set_override('lease_duration', 60,
                               group='manager_cluster')

    def replica(self, host):
        db = db_api.Database(self.conf)
        self.addCleanup(db.dispose)
        records = db_membership.Records(db, clock=lambda: self.now)
        m = membership.Membership(self.conf, db, host, records=records)
        m.start()
        self.addCleanup(m.stop)
        sweeper = image_sweep.ImageSweeper(self.conf, db, membership=m)
        self.addCleanup(sweeper.stop)
        return sweeper

    def listings(self):
        return sum(r.method == 'GET' and r.path == '/v2/images'
                   for r in self.glance.endpoint.requests)

    def test_one_sweep_per_round_the_leader_keeps_it(self):
        s1, s2 = self.replica('m1'), self.replica('m2')
        gone = self.instance('protected')
        self.db.mark_instance_deleted(gone)
        for n in range(4):
            image = self.recovery_image(gone)
            # Both replicas' rounds come in either order.
            first, second = (s1, s2) if n % 2 else (s2, s1)
            log = self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))
            results = {id(first): first.run_once(),
                       id(second): second.run_once()}
            # The first round's leader (s2) keeps leading.
            self.assertEqual([image], results[id(s2)])
            self.assertIsNone(results[id(s1)])
            self.assertIn('round skipped, another replica holds '
                          'leader:image-sweep', log.output)
            self.assertEqual(n + 1, self.listings())
            self.now += 600

    def test_a_dead_leader_s_lease_expires_a_stopped_one_hands_over(self):
        s1, s2 = self.replica('m1'), self.replica('m2')
        self.assertEqual([], s1.run_once())
        self.assertIsNone(s2.run_once())
        # s1 dies: no more rounds, no release. Its lease lasts one
        # interval plus lease_duration.
        self.now += 600 + 59
        self.assertIsNone(s2.run_once())
        self.now += 2
        self.assertEqual([], s2.run_once())
        generation = s2.lease.generation
        self.assertEqual(2, generation)
        # s1 comes back (it was only paused): it lost the lead.
        self.assertIsNone(s1.run_once())
        self.assertIsNone(s1.lease)
        # A clean stop releases the lease: the other leads at once.
        s2.stop()
        self.assertEqual([], s1.run_once())
        self.assertEqual(3, s1.lease.generation)
        self.assertEqual(3, self.listings())

    def test_one_replica_always_leads(self):
        s1 = self.replica('m1')
        gone = self.instance('protected')
        self.db.mark_instance_deleted(gone)
        for _ in range(3):
            image = self.recovery_image(gone)
            self.assertEqual([image], s1.run_once())
            self.now += 600
        self.assertEqual(1, s1.lease.generation)


class SweepLeaderThreadTestCase(_SweepBase):
    """The sweep threads of two replicas, on the database's clock."""

    def test_only_the_leader_s_thread_sweeps(self):
        self.conf.set_override('heartbeat_interval', 60,
                               group='manager_cluster')
        self.conf.set_override('lease_duration', 30,
                               group='manager_cluster')
        self.conf.set_override('image_sweep_interval', 1, group='recovery')
        gone = self.instance('protected')
        self.db.mark_instance_deleted(gone)
        swept = {}
        sweepers = []
        for host in ('m1', 'm2'):
            db = db_api.Database(self.conf)
            self.addCleanup(db.dispose)
            m = membership.Membership(self.conf, db, host)
            m.start()
            self.addCleanup(m.stop)
            sweeper = image_sweep.ImageSweeper(self.conf, db, membership=m)
            real = sweeper.sweep

            def sweep(real=real, host=host):
                swept[host] = swept.get(host, 0) + 1
                return real()
            sweeper.sweep = sweep
            sweepers.append(sweeper)
        for sweeper in sweepers:
            sweeper.start()
            self.addCleanup(sweeper.stop)
        base.wait_for(lambda: sum(swept.values()) >= 3, 30,
                      'three sweeps by either replica')
        self.assertEqual(1, len(swept), swept)
