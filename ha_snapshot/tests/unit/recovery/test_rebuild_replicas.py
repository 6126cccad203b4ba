"""The rebuild action with several manager replicas (issue 12, item 3).

Two replicas (each its own Database, Membership and RecoveryEngine) share
one sqlite file, the store, and the scripted Glance and Nova endpoints of
ha_snapshot/tests/unit/fake_openstack.py. One runs a rebuild and stalls in
the middle of its Glance upload; its lease is not renewed (its database
went away), expires, and the other replica takes the recovery over. The
images are then judged by the recovery id they carry.

Also the rules of ``images.find_reusable`` and ``images.prune`` for
images of several recoveries, against the scripted Glance.
"""

import logging
import threading

import fixtures

from ha_snapshot.db import api as db_api
from ha_snapshot.db import membership as db_membership
from ha_snapshot import exception
from ha_snapshot.manager import membership as membership_mod
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.openstack import clients
from ha_snapshot.openstack import images as images_mod
from ha_snapshot.recovery import rebuild
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import fake_openstack
from ha_snapshot.tests.unit.recovery import test_rebuild


def _renew_fails_for(manager_id):
    real = db_membership.Records.renew_lease

    def renew(self, held, duration):
        if held.owner == manager_id:
            raise exception.DatabaseBusy(reason='the database is away')
        return real(self, held, duration)
    return renew


class TakeoverMidUploadTestCase(test_rebuild.RebuildTestBase):

    def setUp(self):
        super().setUp()
        # NOTE: no beats on the thread (both replicas stay alive for the
        # test's length); recovery leases expire 1 s after a missed renew.
        self.conf.set_override('heartbeat_interval', 60,
                               group='manager_cluster')
        self.conf.set_override('lease_duration', 1.0,
                               group='manager_cluster')

    def replica(self, host):
        db = db_api.Database(self.conf)
        self.addCleanup(db.dispose)
        m = membership_mod.Membership(self.conf, db, host)
        m.start()
        self.addCleanup(m.stop)
        return m

    def engine_for(self, membership):
        action = rebuild.RebuildAction(self.conf, agent_api=self.agent,
                                       store=self.store)
        eng = recovery_mod.RecoveryEngine(
            self.conf, membership.records.db, {'rebuild': action},
            membership=membership)
        self.addCleanup(eng.stop)
        return eng

    def images_of(self, recovery_id):
        return [i for i in self.recovery_images()
                if i.get(images_mod.PROP_RECOVERY) == recovery_id]

    def test_takeover_mid_upload_ends_with_one_image(self):
        m1, m2 = self.replica('m1'), self.replica('m2')
        m1.refresh()
        # NOTE: the owner takes recoveries over; the other replica runs
        # this one (it took the report) and is the one that dies.
        owner = {'m1': m1, 'm2': m2}[m1.owner(self.inst)]
        other = m2 if owner is m1 else m1
        runner, taker = self.engine_for(other), self.engine_for(owner)

        uploading, release = threading.Event(), threading.Event()
        held = []

        def hold_first_upload(image):
            if not held:
                held.append(image['id'])
                uploading.set()
                release.wait(60)
        self.glance.on_upload = hold_first_upload

        rec = runner.request(self.inst, None, 'test')
        self.assertTrue(uploading.wait(60), 'the first upload started')
        [stale] = self.images_of(rec.id)
        self.assertEqual((held[0], 'saving'), (stale['id'], stale['status']))
        first_generation = stale[images_mod.PROP_GENERATION]
        self.assertEqual(self.rp, stale[images_mod.PROP_RESTORE_POINT])
        # The owner leaves a recovery alone while its runner holds the
        # lease.
        self.assertEqual(0, taker.takeover())

        # The runner's database goes away: its lease is not renewed,
        # expires, and the owner takes the recovery over.
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.db.membership.Records.renew_lease',
            _renew_fails_for(other.id)))
        base.wait_for(lambda: taker.takeover() == 1, 30,
                      'the owner to take the recovery over')
        taker.wait(self.inst, 60)
        done = self.db.get_recovery(rec.id)
        self.assertEqual(('succeeded', 'done'), (done.state, done.step),
                         done.error)
        self.assertEqual('protected', self.db.get_instance(self.inst).status)

        # The stale upload of the same recovery was deleted and uploaded
        # again under the new lease generation; exactly one image is left.
        self.assertEqual('deleted', self.glance.images[stale['id']]['status'])
        [image] = self.images_of(rec.id)
        self.assertEqual('active', image['status'])
        self.assertGreater(int(image[images_mod.PROP_GENERATION]),
                           int(first_generation))
        self.assertEqual(str(image['size']), image[images_mod.PROP_SIZE])
        self.assertEqual(self.export_sha512('qcow2'), image['os_hash_value'])
        self.assertEqual([{'os-stop': None},
                          {'rebuild': {'imageRef': image['id']}},
                          {'os-start': None}], self.nova_posts())
        self.assertEqual(image['id'],
                         self.nova.servers[self.inst]['image']['id'])
        self.assertEqual(1, len(self.agent.calls))

        # The stalled runner wakes up: Glance refuses the rest of its
        # upload (410, the image is gone); having lost the lease it
        # deletes nothing and records nothing.
        deletes_before = self.glance_deletes()
        log = self.useFixture(fixtures.FakeLogger(
            name='ha_snapshot.manager.recovery', level=logging.INFO))
        release.set()
        runner.wait(self.inst, 60)
        # Its failure is not reported as the recovery's: the replica
        # that took it over owns the outcome.
        self.assertNotIn('recovery %s failed' % rec.id, log.output)
        self.assertIn('recovery %s left to the replica that took it over'
                      % rec.id, log.output)
        self.assertIn('(here, meanwhile: ImageUploadFailed', log.output)
        self.assertEqual(2, len(self.glance.uploads))
        self.assertIn('failed_after', self.glance.uploads[0])
        self.assertEqual(deletes_before, self.glance_deletes())
        self.assertEqual([image['id']],
                         [i['id'] for i in self.images_of(rec.id)])
        done = self.db.get_recovery(rec.id)
        self.assertEqual(('succeeded', 'done', None),
                         (done.state, done.step, done.error))

    def test_takeover_after_the_upload_reuses_the_image(self):
        m1, m2 = self.replica('m1'), self.replica('m2')
        m1.refresh()
        owner = {'m1': m1, 'm2': m2}[m1.owner(self.inst)]
        other = m2 if owner is m1 else m1
        runner, taker = self.engine_for(other), self.engine_for(owner)
        # The runner stalls once its upload is complete, before it records
        # the rebuild-server step.
        stalled, release = threading.Event(), threading.Event()
        runner_db = other.records.db
        real_update = runner_db.update_recovery

        def update_recovery(recovery_id, **kwargs):
            if kwargs.get('step') == 'rebuild-server':
                stalled.set()
                release.wait(60)
            return real_update(recovery_id, **kwargs)
        runner_db.update_recovery = update_recovery

        rec = runner.request(self.inst, None, 'test')
        self.assertTrue(stalled.wait(60), 'the runner uploaded its image')
        [uploaded] = self.images_of(rec.id)
        self.assertEqual('active', uploaded['status'])
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.db.membership.Records.renew_lease',
            _renew_fails_for(other.id)))
        base.wait_for(lambda: taker.takeover() == 1, 30,
                      'the owner to take the recovery over')
        taker.wait(self.inst, 60)
        done = self.db.get_recovery(rec.id)
        self.assertEqual(('succeeded', 'done'), (done.state, done.step),
                         done.error)
        # Reused: one upload, one image, one rebuild with it.
        self.assertEqual(1, len(self.glance.uploads))
        self.assertEqual([uploaded['id']],
                         [i['id'] for i in self.recovery_images()])
        posts = self.nova_posts()
        self.assertEqual([{'os-stop': None},
                          {'rebuild': {'imageRef': uploaded['id']}},
                          {'os-start': None}], posts)
        # The runner wakes up: its next step is refused; it rebuilds
        # nothing, starts and stops nothing, and deletes nothing.
        release.set()
        runner.wait(self.inst, 60)
        self.assertEqual(posts, self.nova_posts())
        self.assertEqual([], self.glance_deletes())
        self.assertEqual('succeeded', self.db.get_recovery(rec.id).state)

    def glance_deletes(self):
        return [r.path for r in self.glance.endpoint.requests
                if r.method == 'DELETE']


class ImageRulesTestCase(base.TestCase):
    """find_reusable and prune over the images of several recoveries."""

    def setUp(self):
        super().setUp()
        self.glance = fake_openstack.FakeGlance()
        self.addCleanup(self.glance.stop)
        conf = base.make_conf(self.store_dir)
        conf.set_override('auth_type', 'none', group='glance')
        conf.set_override('endpoint_override', self.glance.url,
                          group='glance')
        self.proxy = clients.connection(conf, 'glance').image
        self.inst = base.new_uuid()
        self.n = 0

    def image(self, recovery=None, status='active', rp='rp1', size=1024,
              recorded_size=None):
        self.n += 1
        props = {'tags': [images_mod.TAG, images_mod.instance_tag(self.inst)],
                 images_mod.PROP_INSTANCE: self.inst,
                 images_mod.PROP_RESTORE_POINT: rp, 'status': status,
                 'size': size, 'visibility': 'private',
                 # NOTE: distinct times: find() lists newest first.
                 'created_at': '2026-12-07T00:00:%02dZ' % self.n}
        if recovery is not None:
            props[images_mod.PROP_RECOVERY] = recovery
        if recorded_size is not None:
            props[images_mod.PROP_SIZE] = str(recorded_size)
        return self.glance.add_image(base.new_uuid(), **props)['id']

    def status(self, image_id):
        return self.glance.images[image_id]['status']

    def test_own_complete_image_first_own_unfinished_deleted(self):
        earlier = self.image('r0')
        other_saving = self.image('r9', status='saving')
        own_saving = self.image('r1', status='saving')
        own_queued = self.image('r1', status='queued')
        own_short = self.image('r1', size=10, recorded_size=1024)
        own = self.image('r1', recorded_size=1024)
        found = images_mod.find_reusable(self.proxy, self.inst, 'rp1',
                                         'qcow2', recovery='r1',
                                         may_delete=lambda: True)
        self.assertEqual(own, found.id)
        self.assertEqual('deleted', self.status(own_saving))
        self.assertEqual('deleted', self.status(own_queued))
        # Active but not every byte: not reused, not deleted (not
        # unfinished: Glance took it whole; prune handles it).
        self.assertEqual('active', self.status(own_short))
        # Another recovery's images: never deleted here.
        self.assertEqual('saving', self.status(other_saving))
        self.assertEqual('active', self.status(earlier))

    def test_earlier_recovery_s_image_reused_nothing_deleted(self):
        earlier = self.image('r0')
        other_saving = self.image(None, status='saving')
        found = images_mod.find_reusable(self.proxy, self.inst, 'rp1',
                                         'qcow2', recovery='r1',
                                         may_delete=lambda: True)
        self.assertEqual(earlier, found.id)
        self.assertEqual('saving', self.status(other_saving))

    def test_lease_lost_deletes_nothing(self):
        own_saving = self.image('r1', status='saving')
        with self.assertLogs('ha_snapshot.openstack.images', 'WARNING'):
            self.assertIsNone(images_mod.find_reusable(
                self.proxy, self.inst, 'rp1', 'qcow2', recovery='r1',
                may_delete=lambda: False))
        self.assertEqual('saving', self.status(own_saving))

    def test_prune_touches_finished_recoveries_only(self):
        legacy = self.image(None, rp='rp0')
        old = self.image('done-1', rp='rp1')
        old_unfinished = self.image('done-1', status='queued', rp='rp1')
        newer = self.image('done-2', rp='rp2')
        running = self.image('running', rp='rp3')
        running_saving = self.image('running', status='saving', rp='rp3')
        unknown = self.image('not-in-db', rp='rp3')
        duplicate = self.image('mine', rp='rp4')
        current = self.image('mine', rp='rp4')
        deleted = images_mod.prune(self.proxy, self.inst, 2, current,
                                   recovery='mine',
                                   finished={'done-1', 'done-2'})
        # Kept: current, then the newest finished one (newer); the rest
        # of the finished ones and this recovery's duplicate go.
        self.assertEqual(sorted([legacy, old, old_unfinished, duplicate]),
                         sorted(deleted))
        for image in (current, newer, running, running_saving, unknown):
            self.assertNotEqual('deleted', self.status(image))
        # keep_images = 0: only the current image goes besides.
        self.assertEqual(
            sorted([current, newer]),
            sorted(images_mod.prune(self.proxy, self.inst, 0, current,
                                    recovery='mine',
                                    finished={'done-1', 'done-2'})))
        self.assertEqual({running, running_saving, unknown},
                         {i['id'] for i in self.glance.live()})

    def test_prune_without_recovery_records_as_before(self):
        a, b, c = self.image(None), self.image('x'), self.image('y')
        self.assertEqual(sorted([a, b]),
                         sorted(images_mod.prune(self.proxy, self.inst, 1,
                                                 c)))

    def test_a_failing_lease_check_does_not_hide_the_upload_error(self):
        image = images_mod.create(
            self.proxy, name='x', instance=self.inst, restore_point='rp1',
            disk_format='raw', source_image=None, owner=None, properties={})
        path = self.path('export.raw')
        with open(path, 'wb') as f:
            f.write(b'x' * 4096)
        self.glance.upload_fail.append((500, 0))

        def lease_check():
            raise exception.DatabaseError(reason='database is locked')
        with self.assertLogs('ha_snapshot.openstack.images', 'WARNING') as log:
            e = self.assertRaises(exception.ImageUploadFailed,
                                  images_mod.upload, self.proxy, image, path,
                                  self.inst, may_delete=lease_check)
        self.assertIn('HTTP 500', str(e))
        self.assertIn('not deleted (DatabaseError', '\n'.join(log.output))
