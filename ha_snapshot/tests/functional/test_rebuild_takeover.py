"""A manager replica SIGKILLed in the middle of a ``rebuild`` recovery.

Two real ``ha-snapshot-manager`` processes (issue 12) share a PostgreSQL
database, the shared RabbitMQ and a file store, with a 4 s recovery lease
and a 3 s dead limit. Nova and Glance are the scripted endpoints of
ha_snapshot/tests/unit/fake_openstack.py served on loopback ([nova] and
[glance] ``auth_type = none`` with ``endpoint_override``). The compute
host's agent is a stand-in on the bus (fixtures/agent.py RecordingAgent):
the test registers the server and ships its first delta over RPC as an
agent does, and the stand-in answers the rebuild's ``rebaseline``.

The agent reports the server abnormal; one replica takes the report and
runs the rebuild; the test SIGKILLs that replica (the one holding the
recovery's lease in the database)

* in the middle of its Glance upload (held by ``FakeGlance.on_upload``;
  the export is a 64 MiB raw image, more than loopback's socket buffers
  hold, so Glance gets part of it and sees the client go);
* right after the rebuild reached Nova (step ``wait-rebuilt``; Nova's
  rebuild is left ``stuck`` until the other replica has taken over).

Then it checks what an operator sees: the other replica resumes the
recovery from its recorded step once the lease has expired, the recovery
succeeds once (one rebuild request; one complete recovery image, the
partial one deleted), the server is protected again with no attempt
counted, the lease is free, the survivor counted the recovery, and the
recovery's steps, sampled from the database as they moved, went forward
with one restart. The takeover time (SIGKILL to the recovery's
``finished_at``) is printed and attached as the ``takeover`` detail.
"""

import hashlib
import threading
import time
import uuid

from testtools import content

from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import membership as db_membership
from ha_snapshot import delta_images
from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.manager import membership
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.manager import rpcapi as manager_rpcapi
from ha_snapshot.openstack import images as images_mod
from ha_snapshot import rpc
from ha_snapshot import rpc_auth
from ha_snapshot.tests.fixtures import agent as agent_fixture
from ha_snapshot.tests.fixtures import database as db_fixtures
from ha_snapshot.tests.fixtures import services
from ha_snapshot.tests.functional import daemons
from ha_snapshot.tests.unit import fake_openstack

MiB = 1 << 20
# NOTE: more than loopback TCP can hold in flight (net.ipv4.tcp_rmem and
# tcp_wmem at most 32 + 4 MiB here; 2-3 MiB seen): a killed upload is cut.
DISK_SIZE = 64 * MiB
PROJECT = 'test-project'
SOURCE_IMAGE = '3c1f9a52-7d0e-4f8b-9a61-2b7c5d4e8f10'
LEASE = 4.0
HEARTBEAT = 1.0
DEAD_AFTER = 3
# NOTE: the rebuild action's steps in the order one run records them.
ORDER = ('starting', 'inspect-server', 'find-image', 'export',
         'upload-image', 'stop-server', 'rebuild-server', 'wait-rebuilt',
         'stop-rebuilt', 'rebaseline', 'start-rebuilt', 'wait-running',
         'cleanup-images', 'done')


class RebuildTakeoverTest(daemons.DaemonsTestCase):

    def setUp(self):
        super().setUp()
        # NOTE: set up first, so stopped last: after the daemons.
        cloud = self.useFixture(fake_openstack.Cloud())
        self.glance, self.nova = cloud.glance, cloud.nova
        self.glance.add_image(SOURCE_IMAGE, hw_disk_bus='virtio',
                              os_distro='debian')
        pg = self.useFixture(db_fixtures.PostgreSQLServer())
        options = dict(cloud.options, recovery={
            'action': 'rebuild', 'image_disk_format': 'raw',
            'work_dir': self.path('recovery-work'),
            'rebuild_poll_interval': 0.1, 'rebuild_timeout': 60})
        svc = self.start_replicas(
            pg.url, 2, options=options, agent=False,
            heartbeat_interval=HEARTBEAT, dead_after_missed=DEAD_AFTER,
            lease_duration=LEASE)
        self.host = svc.host
        self.agent = agent_fixture.RecordingAgent()
        server = rpc.get_server(self.transport, rpc.AGENT_TOPIC, self.host,
                                [self.agent])
        server.start()
        self.addCleanup(server.wait)
        self.addCleanup(server.stop)
        self.api = manager_rpcapi.ManagerAPI(
            self.transport, timeout=30,
            signer=svc.signer(rpc_auth.host_identity(self.host)))

    def failure_logs(self) -> dict:
        logs = super().failure_logs()
        for name, endpoint in (('glance', self.glance.endpoint),
                               ('nova', self.nova.endpoint)):
            logs['%s-requests' % name] = ''.join(
                '%s %s\n' % call for call in endpoint.calls()) + ''.join(
                'ERROR %r\n' % e for e in endpoint.errors)
        logs['agent-calls'] = ''.join('%r\n' % (c,)
                                      for c in self.agent.calls)
        return logs

    # --- the server, as its agent and Nova know it ---------------------------

    def protect(self) -> tuple:
        """A server on the stand-in agent's host, registered and with one
        restore point shipped over RPC: (instance, restore point)."""
        inst = str(uuid.uuid4())
        self.nova.add_server(inst, PROJECT, SOURCE_IMAGE, host=self.host)
        self.svc.db.create_instance(inst, PROJECT, host=self.host,
                                    status='protecting', driver='libvirt')
        self.api.register_instance(inst, PROJECT, self.host, 'libvirt', {})
        disk = self.make_qcow2('disk.qcow2', DISK_SIZE,
                               'write -P 0x5a 0 3M', 'write -P 0xa5 40M 1M')
        info = image_inspect.inspect(disk, 'qcow2', max_virtual_size=1 << 40,
                                     allow_backing=False)
        limits = self.svc.conf.image
        prim = delta_images.from_image(
            info, instance=inst, project=PROJECT, sequence=0, parent=None,
            max_part_bytes=limits.max_part_bytes,
            max_part_extents=limits.max_part_extents).to_primitive()
        for _attempt in range(3):
            try:
                for part in prim['parts']:
                    self.api.put_part(inst, 0, part)
                rp = self.api.commit_delta(prim['header'])['restore_point']
                break
            except exception.WrongOwner as e:
                # NOTE: as the agent does: the replicas' views of each
                # other agree only a heartbeat after the last one joined;
                # the delta goes again, whole, to the owner named.
                self.mark('delta refused, sent again to %s: %s'
                          % (self.api.owner(inst), e))
        else:
            self.fail('the replicas kept refusing the delta of %s' % inst)
        row = self.svc.db.get_instance(inst)
        self.assertEqual(('protected', rp),
                         (row.status, row.newest_restore_point_id))
        self.mark('%s protected, restore point %s' % (inst, rp))
        return inst, rp

    def report(self, inst: str) -> tuple:
        """The agent reports the server abnormal: (recovery id, watch)."""
        answer = self.api.report_health(inst, self.host,
                                        'test: the server stopped', {})
        self.assertTrue((answer or '').startswith('recovering: '), answer)
        rec_id = answer.split(': ', 1)[1]
        watch = daemons.StepWatch(self.svc.db, rec_id)
        watch.start()
        self.addCleanup(watch.stop)
        return rec_id, watch

    # --- the replicas --------------------------------------------------------

    def lease_holder(self, inst: str):
        """(the replica holding the recovery lease of ``inst``, the other
        one), from the leases and managers tables."""
        lease = db_membership.Records(self.svc.db).get_lease(
            recovery_mod.lease_key(inst))
        self.assertIsNotNone(lease.owner, 'the recovery lease is held')
        pids = {s.replica.id: s.replica.pid
                for s in membership.survey(self.svc.conf, self.svc.db)}
        [holder] = [d for d in self.svc.managers
                    if d.pid == pids.get(lease.owner)]
        [other] = [d for d in self.svc.managers if d is not holder]
        return holder, other

    def kill_runner(self, inst: str, rec_id: str, when: str) -> tuple:
        """SIGKILL the replica running the recovery: (survivor, its log
        offset, the time of the kill)."""
        runner, survivor = self.lease_holder(inst)
        offset = services.file_size(survivor.log_path)
        runner.kill()
        killed = self.mark('SIGKILL %s (pid %d) %s' % (runner.name,
                                                       runner.pid, when))
        self.victim = runner
        return survivor, offset, killed

    def wait_taken_over(self, survivor, offset: int, rec_id: str,
                        killed: float, step: str):
        """The survivor resumes the recovery at ``step`` within the
        lease and a heartbeat (and slack for a busy machine); returns the
        seconds from the kill."""
        self.wait_log(survivor, 'resuming recovery %s (rebuild) at step %s'
                      % (rec_id, step), offset,
                      LEASE + HEARTBEAT * DEAD_AFTER + 20)
        resumed = time.time() - killed
        self.assertLess(resumed, LEASE + HEARTBEAT + 5,
                        'the recovery was taken over %.1f s after the kill'
                        % resumed)
        return resumed

    def wait_end(self, rec_id: str, killed: float, resumed: float):
        done = self.wait_for(
            lambda: (lambda r: r if r.state in ('succeeded', 'failed')
                     else None)(self.svc.db.get_recovery(rec_id)),
            60, 'recovery %s to end' % rec_id)
        self.assertEqual(('succeeded', 'done', None),
                         (done.state, done.step, done.error))
        takeover = db_engine.to_timestamp(done.finished_at) - killed
        line = ('takeover_seconds=%.2f (kill -> recovery %s succeeded; '
                'resumed by the survivor after %.2f s)'
                % (takeover, rec_id, resumed))
        self.addDetail('takeover', content.text_content(line))
        self.mark(line)
        print(line)
        return done

    # --- what an operator sees afterwards ----------------------------------

    def images_of(self, rec_id: str) -> list:
        """Every image the recovery made, deleted ones too, oldest
        first."""
        return sorted((dict(i) for i in self.glance.images.values()
                       if i.get(images_mod.PROP_RECOVERY) == rec_id),
                      key=lambda i: int(i[images_mod.PROP_GENERATION]))

    def rebuilds(self, inst: str) -> list:
        return [r.json['rebuild'] for r in self.nova.endpoint.requests
                if r.method == 'POST' and r.path.endswith(
                    '/servers/%s/action' % inst)
                and 'rebuild' in (r.json or {})]

    def glance_deletes(self) -> list:
        return [r.path.rsplit('/', 1)[1] for r in self.glance.endpoint.requests
                if r.method == 'DELETE']

    def export_sha512(self, inst: str, rp: str) -> str:
        out = self.path('expected.raw')
        self.svc.store.export(inst, out, rp, fmt='raw')
        with open(out, 'rb') as f:
            return hashlib.file_digest(f, 'sha512').hexdigest()

    def assert_recovered_once(self, inst, rp, rec, survivor, killed,
                              image, watch, resumed_at):
        # The one recovery, started before the kill and finished after.
        self.assertEqual([rec.id],
                         [r.id for r in self.svc.db.list_recoveries(inst)])
        self.assertEqual((1, rp), (rec.attempt, rec.restore_point_id))
        self.assertLess(db_engine.to_timestamp(rec.started_at), killed)
        row = self.svc.db.get_instance(inst)
        self.assertEqual(('protected', 0, rp), (
            row.status, row.recovery_attempts, row.newest_restore_point_id))
        # Nova rebuilt the server once, with the recovery's image.
        self.assertEqual([{'imageRef': image['id']}], self.rebuilds(inst))
        server = self.nova.servers[inst]
        self.assertEqual(('ACTIVE', None, image['id']), (
            server['status'], server['OS-EXT-STS:task_state'],
            server['image']['id']))
        self.assertEqual(('active', str(image['size'])),
                         (image['status'], image[images_mod.PROP_SIZE]))
        self.assertEqual(self.export_sha512(inst, rp), image['os_hash_value'])
        # The agent was asked once to protect it from the restore point.
        self.assertEqual([('rebaseline', {'instance': inst,
                                          'restore_point': rp})],
                         self.agent.calls)
        # The survivor finished it; the lease is free, its generation the
        # survivor's (the image uploaded last was made under it or before).
        self.wait_log(survivor, 'recovery %s succeeded' % rec.id, 0, 10)
        self.assertNotIn('recovery %s succeeded' % rec.id, self.victim.log())
        lease = db_membership.Records(self.svc.db).get_lease(
            recovery_mod.lease_key(inst))
        self.assertIsNone(lease.owner)
        self.assertGreaterEqual(lease.generation,
                                int(image[images_mod.PROP_GENERATION]))
        # Each replica's counters (GET /v1/managers): the survivor ran
        # one recovery to its end, the dead one none.
        counted = self.wait_for(
            lambda: (lambda s: s if s.counters['recoveries_succeeded']
                     else None)(self.standing(survivor)),
            10, '%s to count the recovery' % survivor.name)
        self.assertEqual((1, 0), (counted.counters['recoveries_succeeded'],
                                  counted.counters['recoveries_failed']))
        self.assert_steps(watch.stop(), resumed_at)

    def assert_steps(self, samples: list, resumed_at: str) -> None:
        """The steps the database showed went forward, back once (where
        the survivor started again from the recorded step), and forward
        to done; never failed."""
        shown = ['%.3f %s %s' % (t - self.started, state, step)
                 for t, state, step, _u in samples]
        self.addDetail('steps', content.text_content('\n'.join(shown)))
        # NOTE: the watch may start before the runner moved the recovery
        # from requested (no step) to running.
        while samples and samples[0][1] == 'requested':
            samples = samples[1:]
        states = [s[1] for s in samples]
        steps = [s[2] for s in samples]
        self.assertEqual('succeeded', states[-1], shown)
        self.assertEqual({'running'}, set(states[:-1]), shown)
        order = [ORDER.index(step) for step in steps]
        back = [i for i in range(1, len(order)) if order[i] < order[i - 1]]
        self.assertLessEqual(len(back), 1, shown)
        self.assertIn(resumed_at, steps[:back[0]] if back else steps, shown)
        self.assertEqual('done', steps[-1], shown)

    # --- the tests ---------------------------------------------------------

    def test_runner_killed_mid_upload(self):
        """Killed while Glance receives the recovery image: the survivor
        deletes the partial image, uploads the restore point again under
        its own lease and rebuilds once."""
        inst, rp = self.protect()
        uploading, release = threading.Event(), threading.Event()
        self.addCleanup(release.set)
        held = []

        def hold_first_upload(image):
            if not held:
                held.append(dict(image))
                uploading.set()
                release.wait(60)
        self.glance.on_upload = hold_first_upload
        rec_id, watch = self.report(inst)
        self.wait_for(uploading.is_set, 30,
                      'recovery %s to upload its image' % rec_id)
        rec = self.svc.db.get_recovery(rec_id)
        self.assertEqual(('running', 'upload-image'), (rec.state, rec.step))
        [partial] = self.images_of(rec_id)
        self.assertEqual((held[0]['id'], 'saving'),
                         (partial['id'], partial['status']))

        survivor, offset, killed = self.kill_runner(
            inst, rec_id, 'while it uploads image %s' % partial['id'])
        release.set()
        cut = self.wait_for(
            lambda: 'failed_after' in self.glance.uploads[0]
            and self.glance.uploads[0], 10, 'Glance to see the upload cut')
        self.assertLess(cut['failed_after'],
                        int(partial[images_mod.PROP_SIZE]))
        self.mark('Glance got %.1f MiB of %d MiB before the client went; '
                  'image %s back to %s' % (
                      cut['failed_after'] / MiB, DISK_SIZE // MiB,
                      partial['id'],
                      self.glance.images[partial['id']]['status']))
        resumed = self.wait_taken_over(survivor, offset, rec_id, killed,
                                       'upload-image')
        done = self.wait_end(rec_id, killed, resumed)

        # One complete image, uploaded again under the survivor's lease;
        # the partial one deleted (after Glance put it back to queued).
        first, image = self.images_of(rec_id)
        self.assertEqual((partial['id'], 'deleted'),
                         (first['id'], first['status']))
        self.assertGreater(int(image[images_mod.PROP_GENERATION]),
                           int(first[images_mod.PROP_GENERATION]))
        self.assertEqual([partial['id']], self.glance_deletes())
        self.assertEqual([DISK_SIZE, DISK_SIZE], [
            int(i[images_mod.PROP_SIZE]) for i in (first, image)])
        self.assertEqual(2, len(self.glance.uploads))
        self.assertEqual(DISK_SIZE, self.glance.uploads[1]['size'])
        self.assert_recovered_once(inst, rp, done, survivor, killed, image,
                                   watch, 'upload-image')

    def test_runner_killed_after_the_rebuild_was_sent(self):
        """Killed while Nova rebuilds the server: the survivor finds the
        rebuild under way with the recovery's image, sends none again and
        waits for it; the image is reused, nothing uploaded again."""
        inst, rp = self.protect()
        self.nova.outcome = 'stuck'
        rec_id, watch = self.report(inst)
        self.wait_for(
            lambda: self.rebuilds(inst) and self.svc.db.get_recovery(
                rec_id).step == 'wait-rebuilt', 30,
            'recovery %s to send the rebuild and wait for it' % rec_id)
        [image] = self.images_of(rec_id)
        self.assertEqual('active', image['status'])

        survivor, offset, killed = self.kill_runner(
            inst, rec_id, 'while Nova rebuilds with image %s' % image['id'])
        resumed = self.wait_taken_over(survivor, offset, rec_id, killed,
                                       'wait-rebuilt')
        # NOTE: Nova ends the rebuild only now: the survivor found it
        # under way and waits for it instead of sending another.
        self.nova.settle(inst)
        self.mark('Nova ends the rebuild')
        done = self.wait_end(rec_id, killed, resumed)

        # The image of the killed runner's upload was reused: one upload,
        # nothing deleted.
        self.assertEqual([image['id']],
                         [i['id'] for i in self.images_of(rec_id)])
        self.assertEqual(1, len(self.glance.uploads))
        self.assertEqual([], self.glance_deletes())
        image = self.glance.images[image['id']]
        self.assert_recovered_once(inst, rp, done, survivor, killed, image,
                                   watch, 'wait-rebuilt')
