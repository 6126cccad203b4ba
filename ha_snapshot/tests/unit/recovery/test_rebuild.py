"""The rebuild recovery action against scripted Glance and Nova endpoints.

A real store (file backend) holds a real restore point made by the
manager from a qcow2 delta; the recovery engine runs the action on a real
sqlite database; openstacksdk talks HTTP to the scripted endpoints of
ha_snapshot/tests/unit/fake_openstack.py. The agent is the one stand-in:
an object with AgentAPI's ``rebaseline`` signature that records calls.
"""

import hashlib
import os
import tracemalloc

import fixtures

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.agent import service as agent_service
from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot import delta_images
from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.manager import spool as spool_mod
from ha_snapshot.openstack import images as images_mod
from ha_snapshot.recovery import rebuild
from ha_snapshot import rpc
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import fake_openstack

MiB = base.MiB
SOURCE_IMAGE = '6f2b8d8e-0d55-4c52-9d3c-5e4b8f4e0a01'


class FakeAgentAPI:
    """AgentAPI.rebaseline's signature; records calls, can fail."""

    def __init__(self, nova=None):
        self.calls = []
        self.fail = []
        self.nova = nova
        self.statuses = []
        """The server's status in Nova at each call."""

    def rebaseline(self, host, instance, restore_point, timeout=None):
        self.calls.append((host, instance, restore_point, timeout))
        if self.nova is not None:
            self.statuses.append(self.nova.servers[instance]['status'])
        if self.fail:
            raise self.fail.pop(0)
        return {'instance': instance, 'restore_point': restore_point,
                'driver': 'libvirt'}


class Died(BaseException):
    """The manager process running the recovery is gone."""


class RebuildTestBase(base.TestCase):

    disk_size = 8 * MiB

    def setUp(self):
        super().setUp()
        self.logger = self.useFixture(fixtures.FakeLogger(
            name='ha_snapshot.recovery', level='INFO'))
        cloud = self.useFixture(fake_openstack.Cloud())
        self.glance, self.nova = cloud.glance, cloud.nova
        self.conf = base.make_conf(self.store_dir, storage__chunk_size=MiB,
                                   image__max_part_bytes=MiB)
        self.conf.set_override(
            'connection', 'sqlite:///' + self.path('db.sqlite'),
            group='database')
        for group, values in cloud.options.items():
            for name, value in values.items():
                self.conf.set_override(name, value, group=group)
        for name, value in (('work_dir', self.path('work')),
                            ('rebuild_poll_interval', 0.01),
                            ('rebuild_timeout', 10), ('cooldown', 0),
                            ('max_attempts', 3)):
            self.conf.set_override(name, value, group='recovery')
        self.db = db_api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(self.conf, database=self.db)
        self.store = self.make_store(self.conf)
        self.mgr = manager_mod.Manager(
            self.conf, self.store, self.db,
            spool_mod.Spool(self.path('spool'), MiB))
        self.inst = base.new_uuid()
        self.rp = self.protect()
        self.glance.add_image(SOURCE_IMAGE, hw_firmware_type='uefi',
                              hw_disk_bus='scsi', os_distro='debian',
                              min_disk=1, os_glance_importing_to_stores='',
                              owner_specified_thing='no')
        self.nova.add_server(self.inst, 'p1', SOURCE_IMAGE, host='host1')
        self.agent = FakeAgentAPI(self.nova)
        self.action = rebuild.RebuildAction(self.conf, agent_api=self.agent,
                                            store=self.store)
        self.steps = []
        self.die_at = None
        real_update = self.db.update_recovery

        def update_recovery(recovery_id, **kwargs):
            row = real_update(recovery_id, **kwargs)
            if 'step' in kwargs:
                self.steps.append(kwargs['step'])
                if kwargs['step'] == self.die_at:
                    raise Died()
            return row
        self.db.update_recovery = update_recovery

    def protect(self):
        """A protected libvirt instance with one restore point (3 MiB
        written of ``disk_size``); returns the restore point id."""
        base_img = self.make_qcow2('base.qcow2', self.disk_size,
                                   'write -P 0x11 0 2M',
                                   'write -P 0x22 5M 1M')
        self.mgr.register_instance(self.inst, 'p1', 'host1', 'libvirt', {})
        info = image_inspect.inspect(base_img, 'qcow2',
                                     max_virtual_size=1 << 40,
                                     allow_backing=False)
        d = delta_images.from_image(info, instance=self.inst, project='p1',
                                    sequence=0, parent=None,
                                    max_part_bytes=MiB,
                                    max_part_extents=64)
        prim = d.to_primitive()
        for part in prim['parts']:
            self.mgr.put_part(self.inst, 0, part)
        return self.mgr.commit_delta(prim['header'])['restore_point']

    def engine(self):
        eng = recovery_mod.RecoveryEngine(self.conf, self.db,
                                          {'rebuild': self.action})
        self.addCleanup(eng.stop)
        return eng

    def recover(self, eng=None, restore_point=None):
        eng = eng or self.engine()
        rec = eng.request(self.inst, restore_point, 'test')
        try:
            eng.wait(self.inst, 60)
        except Died:
            pass
        return self.db.get_recovery(rec.id)

    def export_sha512(self, fmt):
        out = self.path('expected.' + fmt)
        self.store.export(self.inst, out, self.rp, fmt=fmt)
        with open(out, 'rb') as f:
            return hashlib.sha512(f.read()).hexdigest()

    def recovery_images(self):
        return [i for i in self.glance.live()
                if images_mod.TAG in i['tags']]

    def glance_calls(self):
        return [(r.method, r.path) for r in self.glance.endpoint.requests]

    def nova_posts(self):
        return [r.json for r in self.nova.endpoint.requests
                if r.method == 'POST']

    def nova_actions(self):
        """The actions posted to Nova, by name."""
        return [next(iter(p)) for p in self.nova_posts()]


class RebuildTestCase(RebuildTestBase):

    def test_rebuild_sends_exact_requests(self):
        rec = self.recover()
        self.assertEqual(('succeeded', 'done', None),
                         (rec.state, rec.step, rec.error))
        self.assertEqual(['starting', 'inspect-server', 'find-image',
                          'export', 'upload-image', 'stop-server',
                          'rebuild-server', 'wait-rebuilt', 'rebaseline',
                          'start-rebuilt', 'wait-running', 'cleanup-images',
                          'done'], self.steps)
        [image] = self.recovery_images()
        img = image['id']
        # Glance: discovery, lookup by tag, source image, create, upload,
        # check, prune.
        self.assertEqual([
            ('GET', '/'),
            ('GET', '/v2/images'),
            ('GET', '/v2/images'),
            ('GET', '/v2/images/' + SOURCE_IMAGE),
            ('POST', '/v2/images'),
            ('PUT', '/v2/images/%s/file' % img),
            ('GET', '/v2/images/' + img),
            ('GET', '/v2/images'),
        ], self.glance_calls())
        tag = 'ha_snapshot:' + self.inst
        for i in (1, 2, 7):
            self.assertEqual([tag], self.glance.endpoint.requests[i]
                             .query['tag'])
        create = self.glance.endpoint.requests[4].json
        self.assertEqual({
            'name': 'ha-snapshot-%s-%s' % (self.inst, self.rp),
            'disk_format': 'qcow2', 'container_format': 'bare',
            'visibility': 'private', 'owner': 'p1',
            'tags': ['ha_snapshot', tag],
            'ha_snapshot_instance': self.inst,
            'ha_snapshot_restore_point': self.rp,
            'ha_snapshot_source_image': SOURCE_IMAGE,
            # the recovery that made it and the bytes it is to hold (no
            # lease generation: one manager, no membership)
            'ha_snapshot_recovery': rec.id,
            'ha_snapshot_size': str(image['size']),
            # inherited from the source image, Glance's own os_* not
            'hw_firmware_type': 'uefi', 'hw_disk_bus': 'scsi',
            'os_distro': 'debian', 'min_disk': 1, 'min_ram': 0,
        }, create)
        put = self.glance.endpoint.requests[5].headers
        self.assertEqual('application/octet-stream', put['Content-Type'])
        self.assertEqual(('active', 'p1', 'private'),
                         (image['status'], image['owner'],
                          image['visibility']))
        self.assertEqual(self.export_sha512('qcow2'),
                         image['os_hash_value'])
        # Nova: discovery, the server twice, a stop, polls till SHUTOFF,
        # the rebuild, polls till SHUTOFF again (Nova keeps a stopped
        # server stopped), a look, the start, polls till ACTIVE twice.
        reqs = self.nova.endpoint.requests
        self.assertEqual([('GET', '/v2.1'), ('GET', '/v2.1/')],
                         [(r.method, r.path) for r in reqs[:2]])
        server = '/v2.1/servers/' + self.inst
        self.assertEqual({server, server + '/action'},
                         {r.path for r in reqs[2:]})
        self.assertEqual([{'os-stop': None}, {'rebuild': {'imageRef': img}},
                          {'os-start': None}], self.nova_posts())
        rebuild_req = [r for r in reqs if r.method == 'POST'][1]
        self.assertTrue(rebuild_req.headers['OpenStack-API-Version']
                        .startswith('compute 2.'))
        srv = self.nova.servers[self.inst]
        self.assertEqual(('ACTIVE', img, 'vm1'),
                         (srv['status'], srv['image']['id'], srv['name']))
        # The agent re-baselines on the rebuilt disk, from this point,
        # before the guest runs.
        self.assertEqual([('host1', self.inst, self.rp, 300)],
                         self.agent.calls)
        self.assertEqual(['SHUTOFF'], self.agent.statuses)
        self.assertEqual('protected',
                         self.db.get_instance(self.inst).status)
        self.assertEqual([], os.listdir(self.path('work')))

    def test_keep_images_prunes_older(self):
        self.conf.set_override('keep_images', 1, group='recovery')
        first = self.recover()
        self.assertEqual('succeeded', first.state)
        [old] = self.recovery_images()
        # A newer restore point, recovered to: the old image goes.
        self.rp = self.ship_again()
        second = self.recover()
        self.assertEqual('succeeded', second.state)
        [new] = self.recovery_images()
        self.assertNotEqual(old['id'], new['id'])
        self.assertEqual(self.rp, new['ha_snapshot_restore_point'])
        self.assertEqual('deleted', self.glance.images[old['id']]['status'])
        # Made from the image the server ran before the first recovery.
        self.assertEqual(SOURCE_IMAGE, new['ha_snapshot_source_image'])
        self.assertEqual('uefi', new['hw_firmware_type'])
        self.conf.set_override('keep_images', 0, group='recovery')
        self.assertEqual('succeeded', self.recover().state)
        self.assertEqual([], self.recovery_images())

    def ship_again(self):
        over = base.new_overlay(self.path('over.qcow2'),
                                self.path('base.qcow2'))
        base.qemu_io(over, 'write -P 0x33 1M 1M')
        info = image_inspect.inspect(over, 'qcow2', max_virtual_size=1 << 40,
                                     allow_backing=True)
        d = delta_images.from_image(info, instance=self.inst, project='p1',
                                    sequence=1, parent=self.rp,
                                    max_part_bytes=MiB, max_part_extents=64)
        prim = d.to_primitive()
        for part in prim['parts']:
            self.mgr.put_part(self.inst, 1, part)
        return self.mgr.commit_delta(prim['header'])['restore_point']

    def test_older_restore_point_and_reuse(self):
        older = self.rp
        self.rp = self.ship_again()
        rec = self.recover(restore_point=older)
        self.assertEqual(('succeeded', older), (rec.state,
                                                rec.restore_point_id))
        [image] = self.recovery_images()
        self.assertEqual(older, image['ha_snapshot_restore_point'])
        # The same point again (the server failed again): the image is
        # reused, the server rebuilt again.
        self.assertEqual('succeeded',
                         self.recover(restore_point=older).state)
        self.assertEqual(1, len(self.glance.uploads))
        self.assertEqual(2, self.nova_actions().count('rebuild'))

    def test_image_owner_refused_falls_back(self):
        self.glance.may_set_owner = False
        self.assertEqual('succeeded', self.recover().state)
        posts = [r.json for r in self.glance.endpoint.requests
                 if r.method == 'POST']
        self.assertEqual(['p1', None], [p.get('owner') for p in posts])
        [image] = self.recovery_images()
        self.assertEqual('service-project', image['owner'])

    def test_owner_service(self):
        self.conf.set_override('image_owner', 'service', group='recovery')
        self.assertEqual('succeeded', self.recover().state)
        [post] = [r.json for r in self.glance.endpoint.requests
                  if r.method == 'POST']
        self.assertNotIn('owner', post)

    def test_stopped_server_is_started(self):
        self.nova.outcome = 'shutoff'
        rec = self.recover()
        self.assertEqual('succeeded', rec.state, rec.error)
        self.assertIn('start-rebuilt', self.steps)
        self.assertEqual({'os-start': None}, self.nova_posts()[-1])
        self.assertEqual('ACTIVE', self.nova.servers[self.inst]['status'])

    def test_server_stopped_before_the_rebuild_is_started(self):
        # Nova stopped the server (its QEMU died, Nova's power sync called
        # the stop API) before the rebuild: Nova shows it ACTIVE with no
        # task for a moment, then powers it off again. The recovery must
        # not take that moment for the end (the agent then found the
        # domain stopped): it starts the server and waits for ACTIVE.
        server = self.nova.servers[self.inst]
        server.update({'status': 'SHUTOFF', 'OS-EXT-STS:vm_state': 'stopped',
                       'OS-EXT-STS:power_state': 4})
        rec = self.recover()
        self.assertEqual('succeeded', rec.state, rec.error)
        self.assertIn('start-rebuilt', self.steps)
        self.assertNotIn('stop-server', self.steps)
        self.assertEqual(['rebuild', 'os-start'], self.nova_actions())
        self.assertEqual(['SHUTOFF'], self.agent.statuses)
        self.assertEqual(('ACTIVE', 'active', None), (
            server['status'], server['OS-EXT-STS:vm_state'],
            server['OS-EXT-STS:task_state']))

    def test_active_for_a_moment_is_not_taken_for_the_end(self):
        # The server was ACTIVE when inspected but Nova stopped it before
        # the rebuild arrived (the same race, one step later): the one
        # ACTIVE without a task is confirmed by the next poll, which sees
        # Nova powering it off; the recovery then starts it.
        self.nova.outcome = 'active-then-stop'
        rec = self.recover()
        self.assertEqual('succeeded', rec.state, rec.error)
        self.assertIn('start-rebuilt', self.steps)
        self.assertEqual(['SHUTOFF'], self.agent.statuses)
        self.assertEqual('ACTIVE', self.nova.servers[self.inst]['status'])

    def test_source_image_gone(self):
        self.glance.images[SOURCE_IMAGE]['status'] = 'deleted'
        self.assertEqual('succeeded', self.recover().state)
        post = [r.json for r in self.glance.endpoint.requests
                if r.method == 'POST'][0]
        self.assertNotIn('hw_firmware_type', post)


class StreamingTestCase(RebuildTestBase):

    disk_size = 64 * MiB

    def test_upload_streams_without_holding_the_image(self):
        self.conf.set_override('image_disk_format', 'raw', group='recovery')
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        tracemalloc.reset_peak()
        rec = self.recover()
        _, peak = tracemalloc.get_traced_memory()
        self.assertEqual('succeeded', rec.state, rec.error)
        [upload] = self.glance.uploads
        size = self.disk_size
        self.assertEqual(size, upload['size'])
        self.assertEqual(str(size), upload['headers']['Content-Length'])
        self.assertFalse(upload['chunked'])
        # Both ends (client and scripted Glance run in this process) held
        # a small fraction of the 64 MiB image at any time.
        self.assertLess(peak, 8 * MiB, 'peak %d bytes' % peak)
        [image] = self.recovery_images()
        self.assertEqual(self.export_sha512('raw'), image['os_hash_value'])


class FailureTestCase(RebuildTestBase):

    def assertFailed(self, rec, step, *texts):
        self.assertEqual(('failed', step), (rec.state, rec.step), rec.error)
        for text in texts:
            self.assertIn(text, rec.error)
        row = self.db.get_instance(self.inst)
        # Retryable: back to protected (attempts left), not recovering.
        self.assertEqual('protected', row.status)
        work = self.path('work')
        self.assertEqual([], os.listdir(work) if os.path.isdir(work) else [])

    def retry_succeeds(self):
        rec = self.recover()
        self.assertEqual('succeeded', rec.state, rec.error)
        return rec

    def test_glance_create_503_is_retried(self):
        # NOTE: keystoneauth retries 503 (openstacksdk's default).
        self.glance.create_fail = [503]
        self.retry_succeeds()
        self.assertEqual(2, sum(r.method == 'POST'
                                for r in self.glance.endpoint.requests))

    def test_glance_create_5xx(self):
        self.glance.create_fail = [500]
        self.assertFailed(self.recover(), 'upload-image',
                          'ImageUploadFailed', 'creating the image record',
                          'HTTP 500')
        self.assertEqual([], self.recovery_images())
        self.assertEqual([], self.nova_posts())
        self.retry_succeeds()

    def test_glance_upload_5xx(self):
        self.glance.upload_fail = [(500, 64 * 1024)]
        self.assertFailed(self.recover(), 'upload-image', 'HTTP 500',
                          'Error in store configuration')
        self.assertEqual([], self.recovery_images())
        self.assertEqual([], self.nova_posts())
        self.assertEqual([], self.agent.calls)
        self.retry_succeeds()
        self.assertEqual(2, len(self.glance.uploads))

    def test_glance_down(self):
        self.glance.stop()
        self.assertFailed(self.recover(), 'find-image', 'Glance: cannot '
                          'reach the image API ([glance] options)')

    def test_nova_409(self):
        message = ("Instance %s is locked" % self.inst)
        self.nova.rebuild_fail = [(409, message)]
        self.assertFailed(self.recover(), 'rebuild-server', 'RebuildFailed',
                          'Nova refused the rebuild', 'HTTP 409', message)
        # The uploaded image stays for the retry, which reuses it.
        self.assertEqual(1, len(self.recovery_images()))
        self.retry_succeeds()
        self.assertEqual(1, len(self.glance.uploads))

    def test_nova_error_state(self):
        self.nova.outcome = 'error'
        self.nova.fault_message = 'Build of instance aborted: disk full'
        self.assertFailed(self.recover(), 'wait-rebuilt', 'Nova put it in '
                          'ERROR: Build of instance aborted: disk full')
        self.assertEqual([], self.agent.calls)
        # The retry rebuilds the server in ERROR as it is (Nova cannot
        # stop it), Nova then starts it: it is stopped again before its
        # re-baseline, and the early run is logged.
        self.nova.outcome = 'active'
        self.steps[:] = []
        self.retry_succeeds()
        self.assertEqual(['os-stop', 'rebuild', 'rebuild', 'os-stop',
                          'os-start'], self.nova_actions())
        self.assertEqual(['SHUTOFF'], self.agent.statuses)
        self.assertIn('its guest ran before the re-baseline',
                      self.logger.output)

    def test_nova_scheduler_refuses(self):
        # Nova rolls the image back and records the fault.
        self.nova.outcome = 'novalidhost'
        self.nova.fault_message = 'No valid host was found. '
        self.assertFailed(self.recover(), 'wait-rebuilt', 'Nova put it in '
                          'ERROR: No valid host was found.')
        self.assertEqual(SOURCE_IMAGE,
                         self.nova.servers[self.inst]['image']['id'])
        self.nova.outcome = 'active'
        self.retry_succeeds()

    def test_rebuild_replaced_by_another(self):
        # Someone rebuilt the server with another image meanwhile.
        real = self.nova.rebuild

        def rebuild(server, body, headers):
            answer = real(server, body, headers)
            server['image'] = dict(server['image'], id=SOURCE_IMAGE)
            return answer
        self.nova.rebuild = rebuild
        self.assertFailed(self.recover(), 'wait-rebuilt', 'runs image %s, '
                          'not the recovery image' % SOURCE_IMAGE)

    def test_timeout_waiting_for_active(self):
        self.conf.set_override('rebuild_timeout', 1, group='recovery')
        self.nova.outcome = 'stuck'
        self.assertFailed(self.recover(), 'wait-rebuilt', 'RebuildTimeout',
                          'not SHUTOFF 1 s after its rebuild',
                          'status REBUILD', 'task_state rebuilding')
        self.assertEqual([], self.agent.calls)

    def test_timeout_waiting_for_active_after_the_start(self):
        self.conf.set_override('rebuild_timeout', 1, group='recovery')
        real = self.nova.start

        def start(server, headers):
            answer = real(server, headers)
            self.nova.settle(server['id'], 'stuck')
            return answer
        self.nova.start = start
        self.assertFailed(self.recover(), 'wait-running', 'RebuildTimeout',
                          'not ACTIVE 1 s after its rebuild',
                          'task_state powering-on')
        self.assertEqual(1, len(self.agent.calls))

    def test_rebaseline_fails(self):
        self.agent.fail = [RuntimeError('agent on host1 did not answer')]
        self.assertFailed(self.recover(), 'rebaseline',
                          'agent on host1 did not answer')
        # Not pruned: the image the server runs stays.
        self.assertEqual(1, len(self.recovery_images()))
        self.retry_succeeds()

    def test_volume_backed_server(self):
        self.nova.servers[self.inst]['image'] = ''
        self.assertFailed(self.recover(), 'inspect-server',
                          'boots from a volume')
        self.assertEqual([], self.glance.uploads)

    def test_server_gone(self):
        del self.nova.servers[self.inst]
        self.assertFailed(self.recover(), 'inspect-server',
                          'Nova has no such server')

    def test_bad_nova_config(self):
        self.conf.clear_override('endpoint_override', group='nova')
        self.assertFailed(self.recover(), 'inspect-server',
                          'ConfigurationError',
                          '[nova] auth_type = none needs')

    def test_attempts_used_up_marks_failed(self):
        self.conf.set_override('max_attempts', 1, group='recovery')
        self.nova.outcome = 'error'
        rec = self.recover()
        self.assertEqual('failed', rec.state)
        self.assertEqual('failed', self.db.get_instance(self.inst).status)
        # The operator may still retry it.
        self.nova.outcome = 'active'
        self.assertEqual('succeeded', self.recover().state)


class ResumeTestCase(RebuildTestBase):
    """The manager dies mid-recovery; a new engine resumes it."""

    def crash_then_resume(self, step):
        self.die_at = step
        rec = self.recover()
        self.assertEqual(('running', step), (rec.state, rec.step))
        self.assertEqual('recovering',
                         self.db.get_instance(self.inst).status)
        self.die_at = None
        eng = self.engine()
        self.assertEqual(1, eng.resume())
        eng.wait(self.inst, 60)
        rec = self.db.get_recovery(rec.id)
        self.assertEqual(('succeeded', 'done'), (rec.state, rec.step),
                         rec.error)
        self.assertEqual('protected', self.db.get_instance(self.inst).status)
        return rec

    def assertResumed(self, actions, rebaselines=1):
        """Nova was asked ``actions`` in all, the agent to re-baseline
        ``rebaselines`` times, each with the server stopped; it runs."""
        self.assertEqual(actions, self.nova_actions())
        self.assertEqual(['SHUTOFF'] * rebaselines, self.agent.statuses)
        self.assertEqual(1, len(self.glance.uploads))
        self.assertEqual(('ACTIVE', None), (
            self.nova.servers[self.inst]['status'],
            self.nova.servers[self.inst]['OS-EXT-STS:task_state']))

    def test_resume_while_stopping_stops_once(self):
        # The crash came as the stop step began (not sent yet).
        self.crash_then_resume('stop-server')
        self.assertResumed(['os-stop', 'rebuild', 'os-start'])

    def test_resume_before_rebuild_does_not_upload_twice(self):
        self.crash_then_resume('rebuild-server')
        self.assertEqual(1, len(self.recovery_images()))
        self.assertResumed(['os-stop', 'rebuild', 'os-start'])

    def test_resume_while_nova_rebuilds_does_not_rebuild_twice(self):
        self.crash_then_resume('wait-rebuilt')
        self.assertResumed(['os-stop', 'rebuild', 'os-start'])

    def test_resume_after_rebuild_done(self):
        # The crash came as the rebaseline step began: it runs once now,
        # the server still stopped.
        self.crash_then_resume('rebaseline')
        self.assertResumed(['os-stop', 'rebuild', 'os-start'])

    def test_resume_after_rebaseline_starts_without_rebaselining(self):
        self.crash_then_resume('start-rebuilt')
        self.assertResumed(['os-stop', 'rebuild', 'os-start'])

    def test_resume_while_starting_does_not_start_twice(self):
        self.crash_then_resume('wait-running')
        self.assertResumed(['os-stop', 'rebuild', 'os-start'])

    def test_resume_at_a_step_of_the_previous_release(self):
        # A manager of the previous release waited for ACTIVE (starting
        # the server) before the re-baseline, and died there: resumed,
        # the server is not rebuilt again, but stopped, re-baselined and
        # started.
        self.die_at = 'wait-rebuilt'
        rec = self.recover()
        self.nova.settle(self.inst, 'shutoff')
        self.nova.start(self.nova.servers[self.inst], {})
        self.db.update_recovery(rec.id, step='wait-active')
        self.die_at = None
        eng = self.engine()
        self.assertEqual(1, eng.resume())
        eng.wait(self.inst, 60)
        self.assertEqual('succeeded', self.db.get_recovery(rec.id).state)
        self.assertResumed(['os-stop', 'rebuild', 'os-stop', 'os-start'])
        self.assertIn('its guest ran before the re-baseline',
                      self.logger.output)

    def test_resume_at_rebaseline_of_a_server_started_meanwhile(self):
        # Someone started the rebuilt server while no manager ran: it is
        # stopped again for the re-baseline (the early run is logged).
        self.die_at = 'rebaseline'
        self.recover()
        self.nova.start(self.nova.servers[self.inst], {})
        self.die_at = None
        eng = self.engine()
        self.assertEqual(1, eng.resume())
        eng.wait(self.inst, 60)
        self.assertResumed(['os-stop', 'rebuild', 'os-stop', 'os-start'])
        self.assertIn('its guest ran before the re-baseline',
                      self.logger.output)

    def test_resume_at_cleanup_after_image_pruned(self):
        # keep_images = 0: the image may be gone when the manager resumes;
        # the server must not be rebuilt again nor re-baselined.
        self.conf.set_override('keep_images', 0, group='recovery')
        self.die_at = 'cleanup-images'
        rec = self.recover()
        self.assertEqual(('running', 'cleanup-images'),
                         (rec.state, rec.step))
        [image] = self.recovery_images()
        image['status'] = 'deleted'
        self.die_at = None
        eng = self.engine()
        self.assertEqual(1, eng.resume())
        eng.wait(self.inst, 60)
        rec = self.db.get_recovery(rec.id)
        self.assertEqual(('succeeded', 'done'), (rec.state, rec.step))
        self.assertResumed(['os-stop', 'rebuild', 'os-start'])

    def test_resume_mid_upload_deletes_the_unfinished_image(self):
        # A crash while the image was uploading leaves it saving/queued.
        self.die_at = 'upload-image'
        rec = self.recover()
        self.assertEqual(('running', 'upload-image'), (rec.state, rec.step))
        leftover = self.glance.add_image(
            'b1b2b3b4-0000-4000-8000-000000000001', status='saving',
            tags=['ha_snapshot', 'ha_snapshot:' + self.inst],
            ha_snapshot_instance=self.inst,
            ha_snapshot_restore_point=self.rp)
        self.die_at = None
        eng = self.engine()
        eng.resume()
        eng.wait(self.inst, 60)
        self.assertEqual('succeeded', self.db.get_recovery(rec.id).state)
        self.assertEqual('deleted', leftover['status'])
        self.assertEqual(1, len(self.recovery_images()))


class AgentService:
    """Stands in for the agent service behind the real RPC endpoint."""

    def __init__(self):
        self.calls = []
        self.fail = None

    def rebaseline(self, instance, restore_point):
        self.calls.append((instance, restore_point))
        if self.fail:
            raise self.fail
        return {'instance': instance, 'restore_point': restore_point,
                'driver': 'libvirt', 'full': False}


class AgentRpcTestCase(RebuildTestBase):
    """The rebaseline call through the real AgentAPI client and the
    agent's real RPC endpoint (oslo.messaging's in-process transport)."""

    def setUp(self):
        super().setUp()
        transport = rpc.get_transport(self.conf, url='fake:/')
        self.svc = AgentService()
        server = rpc.get_server(transport, rpc.AGENT_TOPIC, 'host1',
                                [agent_service.AgentEndpoint(self.svc)])
        server.start()
        self.addCleanup(server.wait)
        self.addCleanup(server.stop)
        self.action.agent_api = agent_rpcapi.AgentAPI(transport, timeout=30)

    def test_rebaseline_over_rpc(self):
        rec = self.recover()
        self.assertEqual('succeeded', rec.state, rec.error)
        self.assertEqual([(self.inst, self.rp)], self.svc.calls)

    def test_agent_error_names_the_agent_side_failure(self):
        self.svc.fail = exception.HypervisorError(
            vm=self.inst, reason='checkpoint of the new disk failed')
        rec = self.recover()
        self.assertEqual(('failed', 'rebaseline'), (rec.state, rec.step))
        self.assertIn('HypervisorError', rec.error)
        self.assertIn('checkpoint of the new disk failed', rec.error)


class ActionUnitTestCase(base.TestCase):

    def test_needs_store_and_agent(self):
        conf = base.make_conf(self.store_dir)
        action = rebuild.RebuildAction(conf)
        e = self.assertRaises(exception.ConfigurationError, action.recover,
                              None, 'rp', lambda step: None)
        self.assertIn('needs the store and the agent API', str(e))

    def test_hashing_reader_detects_rewind(self):
        path = self.path('f')
        with open(path, 'wb') as f:
            f.write(b'a' * 100)
        with images_mod.HashingReader(path) as r:
            self.assertEqual(100, len(r))
            r.read(10)
            r.seek(0)
            r.read(10)
            self.assertFalse(r.valid)
        with images_mod.HashingReader(path) as r:
            while r.read(7):
                pass
            self.assertTrue(r.valid)
            self.assertEqual(hashlib.sha512(b'a' * 100).hexdigest(),
                             r.sha512.hexdigest())

