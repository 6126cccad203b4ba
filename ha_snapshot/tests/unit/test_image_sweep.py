"""Recovery images of deleted servers, swept from a scripted Glance."""

import logging

import fixtures

from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot.manager import image_sweep
from ha_snapshot.openstack import images
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import fake_openstack


class ImageSweepTestCase(base.TestCase):

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
