"""The libvirt hypervisor driver against a real libvirtd running QEMU (TCG).

One private libvirtd per test class (tests/fixtures/libvirt.py). Domains
are tiny q35 guests with no OS, started paused, with one virtio-blk qcow2
disk on a base image; writes go in through libvirt's monitor passthrough
(HMP qemu-io). Every snapshot's delta file is inspected, turned into a
delta and merged into a real recovery-image store (file backend) exactly
as the agent and manager do; every restore point is exported and compared
with the guest view the writes should have produced.
"""

import json
import os
import signal
import subprocess
import threading
import time
import uuid

import fixtures
from testtools import content

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
from ha_snapshot.db import engine as db_engine
from ha_snapshot import exception
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import base as hv
from ha_snapshot.hypervisor import libvirt_ops
from ha_snapshot.hypervisor import libvirt_tracking
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import libvirt as libvirt_fixture
from ha_snapshot.tests.fixtures import rabbitmq
from ha_snapshot.tests.fixtures import services
from ha_snapshot.tests.functional import test_disks

KiB, MiB = base.KiB, base.MiB
SIZE = 64 * MiB
PROJECT = 'p1'
# NOTE: the flags nova-compute undefines a domain with (nova 30,
# virt/libvirt/guest.py delete_configuration): no CHECKPOINTS_METADATA.
NOVA_UNDEFINE = ('VIR_DOMAIN_UNDEFINE_MANAGED_SAVE',
                 'VIR_DOMAIN_UNDEFINE_NVRAM')

DOMAIN_XML = '''<domain type='qemu'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%(disk)s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>'''


# NOTE: Nova's ephemeral disk: a qcow2 file (disk.local) on a raw file in
# _base that Nova formatted (here: a pattern, so that what reads as zeros
# in a restore point must be written as zeros, not left to the backing).
EPHEMERAL_XML = '''    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%(disk)s'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
'''
EPHEMERAL_SIZE = 32 * MiB + 64 * KiB
BASE_PATTERN = 0x55


class Expected:
    """The guest view the writes should produce, as a raw file."""

    def __init__(self, path, size, base_image=None):
        self.path = path
        if base_image:
            base.flatten(base_image, path)
        else:
            with open(path, 'wb') as f:
                f.truncate(size)

    def write(self, offset, length, pattern):
        with open(self.path, 'r+b') as f:
            f.seek(offset)
            f.write(bytes([pattern]) * length)

    def copy(self, out):
        subprocess.run(['cp', '--sparse=always', self.path, out], check=True)
        return out


class LibvirtTestCase(base.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        reason = libvirt_fixture.available()
        if reason:
            raise libvirt_fixture.LibvirtFixtureError(reason)
        cls.libvirtd_dir = '/var/tmp/ha-snapshot-libvirtd-%s' % (
            uuid.uuid4().hex[:8])
        cls.libvirtd = libvirt_fixture.start_libvirtd(cls.libvirtd_dir)

    @classmethod
    def tearDownClass(cls):
        cls.libvirtd.stop()
        subprocess.run(['rm', '-rf', cls.libvirtd_dir], check=False)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        import libvirt
        self.lv = libvirt
        self.conf = base.make_conf(self.store_dir)
        self.conf.set_override('connection_uri', self.libvirtd.uri,
                               group='libvirt')
        self.conf.set_override('backup_dir', self.path('backups'),
                               group='libvirt')
        self.conf.set_override('backup_timeout', 60, group='libvirt')
        self.driver = hypervisor.get_driver(self.conf, 'libvirt')
        self.addCleanup(self.driver.close)
        self.conn = libvirt.open(self.libvirtd.uri)
        self.addCleanup(self.conn.close)
        self.store = self.make_store(self.conf)
        self.inst = base.new_uuid()
        self.parent = None
        self.sequence = 0
        self.addDetail('libvirtd', content.Content(
            content.UTF8_TEXT, lambda: [self.libvirtd.logs().encode()]))
        self.logger = self.useFixture(fixtures.FakeLogger(
            level='INFO', format='%(levelname)s %(name)s %(message)s'))

    # --- domains ------------------------------------------------------------

    def new_domain(self, name='dom', base_writes=('write -P 0x22 0 1M',),
                   size=SIZE):
        base_path = self.make_qcow2('%s-base.qcow2' % name, size,
                                    *base_writes)
        disk = base.new_overlay(self.path('%s.qcow2' % name), base_path)
        dom_uuid = base.new_uuid()
        self.dom_xml = DOMAIN_XML % {'name': name, 'uuid': dom_uuid,
                                     'disk': disk}
        dom = self.conn.defineXML(self.dom_xml)
        self.addCleanup(self._remove_domain, dom_uuid)
        # NOTE: paused: no guest code runs (there is none), the block
        # layer still takes qemu-io writes and backups.
        dom.createWithFlags(self.lv.VIR_DOMAIN_START_PAUSED)
        self.expected = Expected(self.path('%s-expected.raw' % name), size,
                                 base_path)
        return dom_uuid, dom, disk

    def _remove_domain(self, dom_uuid):
        try:
            dom = self.conn.lookupByUUIDString(dom_uuid)
        except self.lv.libvirtError:
            return
        if dom.isActive():
            dom.destroy()
        for cp in dom.listAllCheckpoints():
            cp.delete(self.lv.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        dom.undefine()

    def attach(self, dom_uuid):
        vm = self.driver.attach(dom_uuid)
        self.addCleanup(self.driver.detach, vm)
        return vm

    def write(self, vm, writes):
        for offset, length, pattern in writes:
            self.driver.write(vm, 'vda', offset, length, pattern)
            self.expected.write(offset, length, pattern)

    def qemu_pid(self, name):
        with open(os.path.join(self.libvirtd.run_dir, 'qemu',
                               '%s.pid' % name)) as f:
            return int(f.read())

    def bitmaps(self, disk, dom=None):
        """Bitmap names of the disk: QEMU's own view while it runs (they
        reach the file only when QEMU closes it), else the file's."""
        if dom is not None and dom.isActive():
            import libvirt_qemu
            nodes = json.loads(libvirt_qemu.qemuMonitorCommand(
                dom, json.dumps({'execute': 'query-named-block-nodes',
                                 'arguments': {'flat': True}}), 0))['return']
            for n in nodes:
                if n.get('drv') == 'qcow2' and n.get('file') == disk:
                    return sorted(b['name']
                                  for b in n.get('dirty-bitmaps', ()))
            raise AssertionError('no qcow2 node for %s' % disk)
        out = subprocess.run(['qemu-img', 'info', '-U', '--output=json',
                              disk], capture_output=True, text=True,
                             check=True).stdout
        data = json.loads(out)['format-specific']['data']
        return sorted(b['name'] for b in data.get('bitmaps', ()))

    def flush(self, vm):
        """Make the writes so far durable in the disk file (a crash test
        expects exactly those)."""
        libvirt_ops.qemu_io(self.driver, vm, 'vda', 'flush')

    def our_metadata(self, dom_uuid):
        dom = self.conn.lookupByUUIDString(dom_uuid)
        return [c.getName() for c in dom.listAllCheckpoints()]

    # --- the agent's and manager's part -------------------------------------

    def ship_incremental(self, fo: hv.FrozenOverlay, changed: int):
        """Ship an incremental delta that must hold ``changed`` bytes and
        restore to the expected disk."""
        self.assertFalse(fo.full)
        rp, header = self.ship(fo)
        self.assertEqual(changed, header.changed_bytes)
        self.assert_restore_point(rp, self.expected.path)

    def ship(self, fo: hv.FrozenOverlay):
        """Inspect, extract and merge one delta file as the agent and the
        manager do; returns the restore point."""
        info = image_inspect.inspect(
            fo.frozen.path, 'qcow2',
            max_virtual_size=self.conf.image.max_virtual_size,
            allow_backing=fo.backing is not None,
            expected_backing=fo.backing.path if fo.backing else None)
        self.sequence += 1
        delta = delta_images.from_image(
            info, instance=self.inst, project=PROJECT,
            sequence=self.sequence, parent=self.parent,
            max_part_bytes=MiB, max_part_extents=64, full=fo.full)
        rp = self.store.merge(delta_mod.Delta.from_primitive(
            json.loads(json.dumps(delta.to_primitive()))))
        self.parent = rp.id
        return rp, delta.header

    def assert_restore_point(self, rp, expected_raw):
        out = self.path('export-%s.raw' % rp.id)
        self.store.export(self.inst, out, rp_id=rp.id)
        self.assertTrue(base.same_image(out, expected_raw),
                        'restore point %s differs from the guest view'
                        % rp.number)


class TestLibvirtDriver(LibvirtTestCase):

    def test_full_then_increments_every_restore_point_matches(self):
        dom_uuid, dom, disk = self.new_domain()
        vm = self.attach(dom_uuid)
        self.assertEqual(['vda'], [d.name for d in self.driver.disks(vm)])
        self.write(vm, [(2 * MiB, MiB, 0x33)])
        views = []

        snap = self.driver.snapshot(vm)
        fo = snap.disk('vda')
        self.assertTrue(fo.full)
        self.assertIsNone(fo.backing)
        views.append(self.expected.copy(self.path('view0.raw')))
        rp, header = self.ship(fo)
        self.assertTrue(header.full)
        self.assert_restore_point(rp, views[-1])
        self.driver.commit(vm, fo)
        self.assertFalse(os.path.exists(fo.frozen.path))

        rounds = [
            [(3 * MiB, 64 * KiB, 0x44), (100, 10, 0x55)],
            [(2 * MiB + 4 * KiB, 4 * KiB, 0x66), (SIZE - 64 * KiB, 64 * KiB,
                                                  0x77)],
            [],  # nothing written: an empty increment
        ]
        for i, writes in enumerate(rounds, 1):
            self.write(vm, writes)
            snap = self.driver.snapshot(vm)
            fo = snap.disk('vda')
            self.assertFalse(fo.full)
            self.assertEqual(disk, fo.backing.path)
            views.append(self.expected.copy(self.path('view%d.raw' % i)))
            rp, header = self.ship(fo)
            self.assertFalse(header.full)
            # NOTE: only the clusters written (64 KiB granularity).
            self.assertEqual(len(writes) * 64 * KiB, header.changed_bytes)
            self.assert_restore_point(rp, views[-1])
            self.driver.commit(vm, fo)
        for i, rp in enumerate(self.store.restore_points(self.inst)):
            self.assert_restore_point(rp, views[i])
        # NOTE: the disk chain is untouched; between snapshots libvirt
        # holds no checkpoint of ours, the disk one bitmap.
        self.assertEqual([disk], [img.path for img in
                                  self.driver.disks(vm)[0].chain][:1])
        self.assertEqual([], self.our_metadata(dom_uuid))
        self.assertEqual(1, len(self.bitmaps(disk, dom)))

    def test_nova_can_undefine_between_snapshots_and_tracking_goes_on(self):
        dom_uuid, dom, disk = self.new_domain()
        vm = self.attach(dom_uuid)
        fo = self.driver.snapshot(vm).disk('vda')
        self.ship(fo)
        self.driver.commit(vm, fo)
        # A Nova hard reboot: destroy, undefine with Nova's flags, define
        # the same domain again, start it.
        dom.destroy()
        flags = 0
        for name in NOVA_UNDEFINE:
            flags |= getattr(self.lv, name)
        dom.undefineFlags(flags)
        dom = self.conn.defineXML(self.dom_xml)
        dom.createWithFlags(self.lv.VIR_DOMAIN_START_PAUSED)
        self.write(vm, [(5 * MiB, 128 * KiB, 0x5a)])
        # NOTE: QEMU stored the bitmap on its clean exit: still valid.
        self.ship_incremental(self.driver.snapshot(vm).disk('vda'),
                              128 * KiB)

    def test_no_checkpoint_metadata_while_a_backup_runs(self):
        # A server Nova deletes while a (long) backup runs: Nova destroys
        # the domain and undefines it with its flags at once; any
        # checkpoint metadata left would put the server in ERROR.
        dom_uuid, dom, disk = self.new_domain(
            'long', base_writes=('write -P 0x22 0 900M',), size=1024 * MiB)
        vm = self.attach(dom_uuid)
        outcome = []
        dropped = threading.Event()
        real_delete = libvirt_ops._delete_metadata

        def delete_metadata(drv, vm_):
            real_delete(drv, vm_)
            dropped.set()
        # NOTE: the one seam: when the backup has dropped the metadata.
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.hypervisor.libvirt_ops._delete_metadata',
            delete_metadata))

        def snapshot():
            try:
                outcome.append(self.driver.snapshot(vm))
            except Exception as e:
                outcome.append(e)
        thread = threading.Thread(target=snapshot)
        thread.start()
        self.addCleanup(thread.join, 120)
        self.assertTrue(dropped.wait(60), 'the backup never dropped the '
                        'checkpoint metadata (60 s)')
        self.assertNotEqual(self.lv.VIR_DOMAIN_JOB_NONE, dom.jobInfo()[0],
                            'the backup job ended before the domain could '
                            'be destroyed under it')
        self.assertEqual([], self.our_metadata(dom_uuid))
        self.assertFalse(outcome, 'the snapshot ended early: %s' % outcome)
        dom.destroy()
        flags = 0
        for name in NOVA_UNDEFINE:
            flags |= getattr(self.lv, name)
        dom.undefineFlags(flags)  # raises if metadata were left
        thread.join(120)
        self.assertFalse(thread.is_alive(), 'snapshot hung after destroy')
        self.assertIsInstance(outcome[0], hv.HypervisorError)
        self.assertEqual([], [n for n in os.listdir(
            self.driver.workdir(vm)) if n.endswith('.qcow2')],
            'a failed backup left its delta files')

    def test_failed_backup_bitmaps_go_with_a_later_commit(self):
        """A backup job that fails while the domain runs (aborted here)
        leaves no metadata and no delta file; its checkpoint's bitmap is
        not removed in the failure path (most failures are a domain going
        away, when redefining metadata races Nova's undefine) but by the
        next commit, and tracking goes on incrementally."""
        dom_uuid, dom, disk = self.new_domain('abort', size=1024 * MiB)
        vm = self.attach(dom_uuid)
        first = self.driver.snapshot(vm).disk('vda')
        self.ship(first)
        self.driver.commit(vm, first)
        self.assertEqual(1, len(self.bitmaps(disk, dom)))
        started = threading.Event()
        real_wait = libvirt_ops._wait_job

        def abort_then_wait(drv, vm_, deadline):
            started.set()
            try:
                dom.abortJob()
            except self.lv.libvirtError:
                pass  # NOTE: ended already: tried again below
            return real_wait(drv, vm_, deadline)
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.hypervisor.libvirt_ops._wait_job', abort_then_wait))
        # NOTE: enough changed data that the job usually runs while we
        # abort it; on a loaded host it may conclude first (the snapshot
        # then succeeds): commit it and provoke the failure again, with
        # more data each time.
        sizes = (256, 512, 768, 768, 768)
        for attempt, size in enumerate(sizes):
            self.write(vm, [(0, size * MiB, 0x33 + attempt)])
            started.clear()
            try:
                done = self.driver.snapshot(vm).disk('vda')
            except hv.SnapshotFailed:
                break
            self.assertTrue(started.is_set())
            self.ship(done)
            self.driver.commit(vm, done)
        else:
            self.fail('the backup job concluded before every one of %d '
                      'aborts: no failure was provoked' % len(sizes))
        self.assertTrue(started.is_set())
        fill = 0x33 + attempt
        self.assertTrue(self.driver.is_alive(vm))
        self.assertEqual([], self.our_metadata(dom_uuid))
        self.assertEqual([], self.driver.frozen_images(vm, 'vda'))
        # The failed checkpoint's bitmap is still there, and recorded.
        self.assertEqual(2, len(self.bitmaps(disk, dom)))
        self.assertEqual(1, len(libvirt_ops._load(self.driver, vm).orphans))
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.hypervisor.libvirt_ops._wait_job', real_wait))
        second = self.driver.snapshot(vm).disk('vda')
        self.assertFalse(second.full)
        rp, _header = self.ship(second)
        self.driver.commit(vm, second)
        self.assertEqual([], libvirt_ops._load(self.driver, vm).orphans)
        self.assertEqual(1, len(self.bitmaps(disk, dom)))
        self.assertEqual([], self.our_metadata(dom_uuid))
        out = self.path('abort.raw')
        self.store.export(self.inst, out, rp_id=rp.id)
        with open(out, 'rb') as f:
            f.seek(255 * MiB)
            self.assertEqual(bytes([fill]) * MiB, f.read(MiB))

    def test_lost_checkpoint_after_crash_falls_back_to_full_and_says_so(self):
        dom_uuid, dom, disk = self.new_domain('crash')
        vm = self.attach(dom_uuid)
        fo = self.driver.snapshot(vm).disk('vda')
        self.ship(fo)
        self.driver.commit(vm, fo)
        self.write(vm, [(7 * MiB, 64 * KiB, 0x71)])
        self.flush(vm)
        os.kill(self.qemu_pid('crash'), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(dom.isActive(), 'libvirt did not see QEMU die')
        self.assertRaises(hv.VMNotRunning, self.driver.snapshot, vm)
        dom.createWithFlags(self.lv.VIR_DOMAIN_START_PAUSED)
        self.write(vm, [(9 * MiB, 64 * KiB, 0x72)])
        fo = self.driver.snapshot(vm).disk('vda')
        self.assertTrue(fo.full)
        self.assertIsNone(fo.backing)
        self.assertIn('is lost', self.logger.output)
        self.assertIn('FULL backup', self.logger.output)
        rp, header = self.ship(fo)
        self.assertTrue(header.full)
        self.assertEqual(2, rp.number)
        self.assert_restore_point(rp, self.expected.path)
        self.driver.commit(vm, fo)
        # NOTE: the broken bitmap went with the fallback: one bitmap left.
        self.assertEqual(1, len(self.bitmaps(disk, dom)))
        self.write(vm, [(11 * MiB, 64 * KiB, 0x73)])
        fo = self.driver.snapshot(vm).disk('vda')
        self.assertFalse(fo.full)
        rp, _h = self.ship(fo)
        self.assert_restore_point(rp, self.expected.path)

    def test_commit_refuses_out_of_order_and_is_idempotent(self):
        dom_uuid, dom, disk = self.new_domain()
        vm = self.attach(dom_uuid)
        first = self.driver.snapshot(vm).disk('vda')
        self.write(vm, [(0, 64 * KiB, 0x10)])
        second = self.driver.snapshot(vm).disk('vda')
        self.assertEqual([first.frozen.path, second.frozen.path],
                         [f.frozen.path for f in
                          self.driver.frozen_images(vm, 'vda')])
        self.assertRaises(hv.CommitOrderError, self.driver.commit, vm,
                          second)
        self.assertTrue(self.driver.commit(vm, first)[0].committed)
        self.assertFalse(self.driver.commit(vm, first)[0].committed)
        self.assertTrue(self.driver.commit(vm, second)[0].committed)
        self.assertEqual([], self.driver.frozen_images(vm, 'vda'))
        self.assertEqual(1, len(self.bitmaps(disk, dom)))

    def test_stop_and_start_tracking_leave_nothing_behind(self):
        dom_uuid, dom, disk = self.new_domain()
        vm = self.attach(dom_uuid)
        fo = self.driver.snapshot(vm).disk('vda')
        self.driver.stop_tracking(vm)
        self.assertFalse(os.path.exists(fo.frozen.path))
        self.assertEqual([], self.bitmaps(disk, dom))
        self.assertEqual([], self.driver.frozen_images(vm, 'vda'))
        self.assertFalse(os.path.exists(self.driver.workdir(vm)))
        # start_tracking: the next snapshot holds only later writes.
        self.assertTrue(self.driver.start_tracking(vm))
        self.assertEqual([], self.our_metadata(dom_uuid))
        self.write(vm, [(4 * MiB, 64 * KiB, 0x4f)])
        fo = self.driver.snapshot(vm).disk('vda')
        self.assertFalse(fo.full)
        info = image_inspect.inspect(
            fo.frozen.path, 'qcow2', max_virtual_size=1 << 40,
            allow_backing=True, expected_backing=disk)
        delta = delta_images.from_image(
            info, instance=self.inst, project=PROJECT, sequence=1,
            parent='x', max_part_bytes=MiB, max_part_extents=64)
        self.assertEqual(64 * KiB, delta.header.changed_bytes)

    def test_events_blockstats_and_errors(self):
        dom_uuid, dom, disk = self.new_domain()
        vm = self.attach(dom_uuid)
        seen = []
        self.driver.subscribe(vm, seen.append)
        stats = self.driver.blockstats(vm)['vda']
        self.assertTrue(stats.accounted)
        self.assertGreater(stats.wr_highest_offset, 0)
        self.assertRaises(hv.HypervisorError, self.driver.write, vm, 'vda',
                          SIZE - 1, 2)
        self.assertRaises(hv.DiskNotFound, self.driver.write, vm, 'vdz',
                          0, 1)
        self.assertRaises(exception.DomainNotFound, self.driver.attach,
                          base.new_uuid())
        dom.resume()
        dom.suspend()
        dom.destroy()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and hv.PROCESS_EXITED not in [
                e.kind for e in seen]:
            time.sleep(0.05)
        kinds = [e.kind for e in seen]
        self.assertIn('RESUME', kinds)
        self.assertIn('STOP', kinds)
        self.assertIn(hv.PROCESS_EXITED, kinds)
        self.assertEqual('destroyed', [e for e in seen if e.kind ==
                                       hv.PROCESS_EXITED][0].data['reason'])
        self.assertFalse(self.driver.is_alive(vm))
        self.assertRaises(hv.VMNotRunning, self.driver.snapshot, vm)

    def test_libvirtd_restart_is_not_a_failure(self):
        dom_uuid, dom, disk = self.new_domain('restart')
        vm = self.attach(dom_uuid)
        seen = []
        self.driver.subscribe(vm, seen.append)
        fo = self.driver.snapshot(vm).disk('vda')
        self.ship(fo)
        self.driver.commit(vm, fo)
        self.write(vm, [(8 * MiB, 64 * KiB, 0x58)])
        self.libvirtd.restart_libvirtd()
        self.assertTrue(self.driver.is_alive(vm))
        deadline = time.monotonic() + 30
        while True:
            try:
                fo = self.driver.snapshot(vm).disk('vda')
                break
            except (exception.LibvirtError, hv.SnapshotFailed):
                # NOTE: the driver has not reconnected yet.
                self.assertLess(time.monotonic(), deadline,
                                'no snapshot 30 s after libvirtd restart')
                time.sleep(0.2)
        self.ship_incremental(fo, 64 * KiB)
        self.driver.commit(vm, fo)
        self.assertEqual([], [e.kind for e in seen if e.kind in (
            hv.PROCESS_EXITED, hv.MONITOR_CLOSED)])
        # Events come through the new connection.
        conn = self.lv.open(self.libvirtd.uri)
        self.addCleanup(conn.close)
        conn.lookupByUUIDString(dom_uuid).destroy()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and hv.PROCESS_EXITED not in [
                e.kind for e in seen]:
            time.sleep(0.05)
        self.assertIn(hv.PROCESS_EXITED, [e.kind for e in seen])

    def test_unrecorded_checkpoint_is_dropped_at_attach(self):
        """An agent killed between the backup and its record: the next
        attach removes the checkpoint, and the next increment still holds
        every write since the recorded one."""
        dom_uuid, dom, disk = self.new_domain()
        vm = self.attach(dom_uuid)
        fo = self.driver.snapshot(vm).disk('vda')
        self.ship(fo)
        self.driver.commit(vm, fo)
        self.write(vm, [(6 * MiB, 64 * KiB, 0x61)])
        stray = 'ha-snapshot-999'
        dom.checkpointCreateXML(libvirt_tracking.checkpoint_xml(
            stray, ['vda'], ['vda']), 0)
        self.driver.detach(vm)
        vm = self.attach(dom_uuid)
        self.assertEqual([], self.our_metadata(dom_uuid))
        self.assertNotIn(stray, self.bitmaps(disk, dom))
        self.ship_incremental(self.driver.snapshot(vm).disk('vda'),
                              64 * KiB)


class TestNovaServerProtection(LibvirtTestCase):
    """The agent and manager daemons (real processes, RabbitMQ) protect a
    domain the way the Nova hook asks: a spec with the instance uuid only;
    then a Nova-like rebuild and the rebaseline RPC."""

    def start_services(self, agent_options=None):
        rabbit = self.useFixture(rabbitmq.SharedRabbitMQ())
        self.host = 'agent-%s' % uuid.uuid4().hex[:8]
        self.svc = self.useFixture(services.Services(
            self.path('services'), rabbit.transport_url, self.host,
            options={'libvirt': {'connection_uri': self.libvirtd.uri,
                                 'backup_dir': self.path('agent-backups')},
                     # NOTE: no Nova here: a health report ends in a
                     # refused restart, never in a rebuild attempt.
                     'recovery': {'actions': 'libvirt:restart'},
                     'agent': dict(agent_options or {})}))
        self.addOnException(lambda exc_info: [
            self.addDetail(name, content.text_content(text))
            for name, text in self.svc.logs().items()])
        self.svc.start()
        self.api = agent_rpcapi.AgentAPI(self.svc.transport(),
                                         signer=self.svc.signer())

    def points(self):
        return self.svc.db.list_restore_points(self.inst)

    def wait_for(self, predicate, what, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        self.fail('timed out after %s s waiting for %s' % (timeout, what))

    def wait_points(self, count, after_number=0):
        return self.wait_for(
            lambda: [p for p in self.points() if p.number > after_number]
            if len([p for p in self.points()
                    if p.number > after_number]) >= count else None,
            '%d restore points after #%d' % (count, after_number))

    def points_after(self, x, holding, what):
        """Every restore point after ``x``, once one of them is
        ``holding(point)`` (snapshots go on meanwhile: on a busy host
        more than one may come first, empty)."""
        def ready():
            points = [p for p in self.points() if p.number > x.number]
            return points if any(holding(p) for p in points) else None
        return self.wait_for(
            ready, 'a restore point after #%d %s' % (x.number, what))

    def settled_point(self):
        """The newest restore point, once the agent has nothing pending
        and bases its next delta on it."""
        self.wait_for(lambda: not self.svc.agent_state(self.inst)[
            'pending'] and self.svc.agent_state(self.inst)['parent']
            == self.points()[-1].id, 'the agent to settle')
        return self.points()[-1]

    def protected_then_stopped(self):
        """A Nova server protected by the libvirt driver, given its first
        restore point, then stopped: (uuid, domain, disk, the point)."""
        self.start_services()
        dom_uuid, dom, disk = self.new_domain('server')
        self.inst = dom_uuid
        self.svc.db.create_instance(self.inst, PROJECT, host=self.host,
                                    status='protecting', driver='qemu')
        self.api.protect(self.host, self.inst, PROJECT,
                         {'nova': True, 'uuid': self.inst,
                          'name': 'server-1'})
        self.wait_points(1)
        dom.destroy()
        return dom_uuid, dom, disk, self.settled_point()

    def unprotect(self):
        self.api.unprotect(self.host, self.inst)
        self.wait_for(lambda: not os.path.exists(os.path.join(
            self.svc.state_dir, self.inst, 'state.json')),
            'the agent to drop the instance')

    def export(self, rp_id):
        out = self.path('export-%s.raw' % rp_id)
        self.svc.store.export(self.inst, out, rp_id=rp_id)
        return out

    def rebuild_stopped(self, dom, disk, x_raw):
        """What Nova's rebuild of a stopped server leaves: the domain
        undefined (Nova's flags), a new overlay on an image of ``x_raw``
        at the same path, the same domain defined again, not running."""
        flags = 0
        for name in NOVA_UNDEFINE:
            flags |= getattr(self.lv, name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(flags)
        image = self.path('rebuild-image.qcow2')
        base.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', x_raw, image)
        os.unlink(disk)
        base.new_overlay(disk, image)
        subprocess.run(['cp', '--sparse=always', x_raw,
                        self.expected.path], check=True)
        return self.conn.defineXML(self.dom_xml)

    def test_rebaseline_of_a_stopped_domain_tracks_from_its_start(self):
        # The recoveries rebuild a server stopped, re-baseline it, and
        # only then have Nova start it: what its guest writes from its
        # first instruction on is in the next delta.
        dom_uuid, dom, disk, x = self.protected_then_stopped()
        dom = self.rebuild_stopped(dom, disk, self.export(x.id))

        result = self.api.rebaseline(self.host, self.inst, x.id, timeout=60)
        self.assertEqual({'instance': self.inst, 'restore_point': x.id,
                          'driver': 'libvirt', 'full': False,
                          'disks_restored': [], 'disks_left': []}, result)
        self.assertFalse(dom.isActive())
        # NOTE: the bitmap is in the image before any QEMU opens it.
        self.assertEqual(1, len(self.bitmaps(disk)))
        # Nova starts it; the guest writes at once (no snapshot can come
        # between: the first one needs the domain running). Not paused:
        # Nova's os-start is no pause, and a pause is an incident.
        dom.create()
        vm = self.attach(dom_uuid)
        self.write(vm, [(5 * MiB, 64 * KiB, 0x35), (0, 4 * KiB, 0x36)])
        # NOTE: a snapshot may come between the two writes (it did in CI,
        # on a busy host): the point to check is one taken after both.
        written = db_engine.to_datetime(time.time())

        following = self.points_after(
            x, lambda p: p.taken_at is not None and p.taken_at > written,
            'taken after the writes')
        self.assertEqual(x.id, following[0].parent_id)
        self.assertTrue(all(p.changed_bytes <= 128 * KiB
                            for p in following),
                        [p.changed_bytes for p in following])
        self.assertTrue(base.same_image(self.export(following[-1].id),
                                        self.expected.path))
        # The health monitor watches it from its start: a crash now is
        # reported (not swallowed by the wait for the start).
        row = self.svc.db.get_instance(self.inst)
        if row.status != 'protected':
            self.svc.db.update_instance_status(self.inst, row.status,
                                               'protected')
        before = self.svc.db.get_instance(self.inst).last_report_at
        dom.destroy()
        self.wait_for(lambda: self.svc.db.get_instance(self.inst)
                      .last_report_at != before, 'the crash to be reported')
        self.unprotect()

    def test_rebaseline_of_a_running_domain_misses_earlier_writes(self):
        # Why the recoveries re-baseline a server before it starts: a
        # running one's tracking begins at the re-baseline, and what its
        # guest wrote before is in no delta.
        dom_uuid, dom, disk, x = self.protected_then_stopped()
        x_raw = self.export(x.id)
        dom = self.rebuild_stopped(dom, disk, x_raw)
        dom.createWithFlags(self.lv.VIR_DOMAIN_START_PAUSED)
        vm = self.attach(dom_uuid)
        self.write(vm, [(5 * MiB, 64 * KiB, 0x35)])
        self.api.rebaseline(self.host, self.inst, x.id, timeout=60)
        self.write(vm, [(7 * MiB, 64 * KiB, 0x37)])

        following = self.points_after(x, lambda p: p.changed_bytes,
                                      'holding a write')
        self.assertEqual(64 * KiB, sum(p.changed_bytes for p in following))
        # The store's image: X with the later write, not the earlier one.
        out = self.export(following[-1].id)
        self.assertFalse(base.same_image(out, self.expected.path))
        with open(out, 'rb') as f:
            f.seek(5 * MiB)
            self.assertNotEqual(b'\x35' * 16, f.read(16))
            f.seek(7 * MiB)
            self.assertEqual(b'\x37' * 16, f.read(16))
        self.unprotect()

    def test_nova_spec_protected_by_libvirt_then_rebaselined(self):
        self.start_services()
        dom_uuid, dom, disk = self.new_domain('server')
        self.inst = dom_uuid
        vm = self.attach(dom_uuid)
        self.svc.db.create_instance(self.inst, PROJECT, host=self.host,
                                    status='protecting', driver='qemu')
        # What the Nova hook casts for instance.create.end.
        self.api.protect(self.host, self.inst, PROJECT,
                         {'nova': True, 'uuid': self.inst,
                          'name': 'server-1'})
        first = self.wait_points(1)[0]
        self.assertIsNone(first.parent_id)
        self.assertEqual('libvirt',
                         self.svc.db.get_instance(self.inst).driver)
        self.write(vm, [(3 * MiB, 256 * KiB, 0x31), (0, 4 * KiB, 0x32)])
        newest = self.wait_points(2, after_number=first.number)[-1]
        self.assertTrue(base.same_image(self.export(newest.id),
                                        self.expected.path))
        increments = [p for p in self.points() if p.number > 1]
        self.assertTrue(all(p.changed_bytes <= 320 * KiB
                            for p in increments), [p.changed_bytes
                                                   for p in increments])

        # The server fails: the agent reports it and stops snapshots.
        dom.destroy()
        x = self.settled_point()
        x_raw = self.export(x.id)
        self.assertTrue(base.same_image(x_raw, self.expected.path))

        # Nova rebuilds it from an image of X: the domain goes (Nova's
        # undefine flags), the disk is a new overlay on that image at the
        # same path, the same domain is defined and started again.
        dom = self.rebuild_stopped(dom, disk, x_raw)
        dom.createWithFlags(self.lv.VIR_DOMAIN_START_PAUSED)

        result = self.api.rebaseline(self.host, self.inst, x.id, timeout=60)
        self.assertEqual({'instance': self.inst, 'restore_point': x.id,
                          'driver': 'libvirt', 'full': False,
                          'disks_restored': [], 'disks_left': []}, result)
        self.driver.detach(vm)
        vm = self.attach(dom_uuid)
        self.write(vm, [(9 * MiB, 64 * KiB, 0x39)])
        following = self.points_after(x, lambda p: p.changed_bytes,
                                      'holding the write')
        # NOTE: the next delta applies to X and holds only the new write.
        self.assertEqual(x.id, following[0].parent_id)
        self.assertTrue(all(p.changed_bytes <= 64 * KiB
                            for p in following),
                        [p.changed_bytes for p in following])
        self.assertTrue(base.same_image(self.export(following[-1].id),
                                        self.expected.path))
        # A restart (the qemu driver's recovery) is refused for it.
        e = self.assertRaises(exception.OperationNotSupported,
                              self.api.restart, self.host, self.inst, x.id,
                              30)
        self.assertIn('rebuild', str(e))
        # Protection goes on after the refusal.
        self.write(vm, [(12 * MiB, 64 * KiB, 0x3c)])
        newest = self.wait_points(2, after_number=following[-1].number)[-1]
        self.assertTrue(base.same_image(self.export(newest.id),
                                        self.expected.path))
        # Unprotected: nothing of ours stays in the domain or on the host.
        self.unprotect()
        self.assertEqual([], self.bitmaps(disk, dom))
        self.assertFalse(os.path.exists(self.path('agent-backups',
                                                  self.inst)))
        self.assertEqual([], self.our_metadata(self.inst))

    # --- every disk (issue 14 item 1, the Nova path) -------------------------

    def ephemeral_disk(self, name):
        """A Nova-like empty ephemeral disk: a new qcow2 file on the raw
        _base file (made once, as Nova keeps it)."""
        base_file = self.path('_base', 'ephemeral_0_32')
        if not os.path.exists(base_file):
            os.makedirs(os.path.dirname(base_file), exist_ok=True)
            with open(base_file, 'wb') as f:
                f.truncate(EPHEMERAL_SIZE)
                f.write(bytes([BASE_PATTERN]) * MiB)
        path = self.path(name)
        if os.path.exists(path):
            os.unlink(path)
        return base.new_overlay(path, base_file, backing_fmt='raw')

    def two_disk_server(self, agent_options=None):
        """A protected Nova-like server with a root (vda) and an
        ephemeral disk (vdb); (domain uuid, domain, root file, ephemeral
        file, the ephemeral's Expected)."""
        self.start_services(agent_options)
        eph = self.ephemeral_disk('server-disk.local')
        base_path = self.make_qcow2('server-base.qcow2', SIZE,
                                    'write -P 0x22 0 1M')
        disk = base.new_overlay(self.path('server.qcow2'), base_path)
        dom_uuid = base.new_uuid()
        self.dom_xml = (DOMAIN_XML % {'name': 'server', 'uuid': dom_uuid,
                                      'disk': disk}).replace(
            '    <controller', EPHEMERAL_XML % {'disk': eph}
            + '    <controller', 1)
        dom = self.conn.defineXML(self.dom_xml)
        self.addCleanup(self._remove_domain, dom_uuid)
        dom.create()
        self.expected = Expected(self.path('server-expected.raw'), SIZE,
                                 base_path)
        eph_expected = Expected(self.path('server-eph-expected.raw'),
                                EPHEMERAL_SIZE)
        eph_expected.write(0, MiB, BASE_PATTERN)
        self.inst = dom_uuid
        self.svc.db.create_instance(self.inst, PROJECT, host=self.host,
                                    status='protecting', driver='qemu')
        self.api.protect(self.host, self.inst, PROJECT,
                         {'nova': True, 'uuid': self.inst,
                          'name': 'server-1'})
        return dom_uuid, dom, disk, eph, eph_expected

    def write_both(self, vm, eph_expected, root_writes, eph_writes):
        self.write(vm, root_writes)
        for offset, length, pattern in eph_writes:
            if pattern == 0:
                libvirt_ops.qemu_io(self.driver, vm, 'vdb', 'write -z %d %d'
                                    % (offset, length))
            else:
                self.driver.write(vm, 'vdb', offset, length, pattern)
            eph_expected.write(offset, length, pattern)

    def assert_point_is(self, rp_id, root_raw, eph_raw):
        disks = test_disks.split_point(self.svc.store, self.inst, rp_id,
                                       self.path('exports'))
        self.assertEqual(['vda', 'vdb'], sorted(disks))
        self.assertTrue(base.same_image(disks['vda'], root_raw), 'vda')
        self.assertTrue(base.same_image(disks['vdb'], eph_raw), 'vdb')
        return disks

    def test_ephemeral_disk_restored_by_the_rebaseline(self):
        dom_uuid, dom, disk, eph, eph_expected = self.two_disk_server()
        vm = self.attach(dom_uuid)
        first = self.wait_points(1)[0]
        self.assertEqual([['vda', 'root', SIZE],
                          ['vdb', 'ephemeral', EPHEMERAL_SIZE]],
                         [[d['target'], d['role'], d['size']]
                          for d in json.loads(first.disks)])
        # Patterns in both disks; zeros over part of the base file's
        # pattern, and the ephemeral disk's last bytes.
        self.write_both(vm, eph_expected,
                        [(3 * MiB, 256 * KiB, 0x31), (0, 4 * KiB, 0x32)],
                        [(0, 64 * KiB, 0), (2 * MiB, MiB, 0x41),
                         (EPHEMERAL_SIZE - 64 * KiB, 64 * KiB, 0x42)])
        written = db_engine.to_datetime(time.time())
        self.points_after(
            first, lambda p: p.taken_at is not None and p.taken_at > written,
            'taken after the writes')
        # The server fails; X: its newest point, both disks as written.
        dom.destroy()
        self.driver.detach(vm)
        x = self.settled_point()
        x_disks = self.assert_point_is(x.id, self.expected.path,
                                       eph_expected.path)

        # Nova's rebuild (stopped): the root from an image of X's root, an
        # empty ephemeral disk on the same _base file.
        dom = self.rebuild_stopped(dom, disk, x_disks['vda'])
        self.ephemeral_disk('server-disk.local')
        self.assertNotEqual('', test_disks.differs(x_disks['vdb'], eph))

        result = self.api.rebaseline(self.host, self.inst, x.id, timeout=60)
        self.assertEqual({'instance': self.inst, 'restore_point': x.id,
                          'driver': 'libvirt', 'full': False,
                          'disks_restored': ['vdb'], 'disks_left': []},
                         result)
        self.assertFalse(dom.isActive())
        # Both disks are X's, byte for byte; the ephemeral one is still a
        # qcow2 file on its _base file; each has its new bitmap only.
        self.assertEqual('', test_disks.differs(x_disks['vda'], disk))
        self.assertEqual('', test_disks.differs(x_disks['vdb'], eph))
        info = json.loads(base.qemu_img('info', '-U', '--output=json', eph))
        self.assertEqual(('qcow2', self.path('_base', 'ephemeral_0_32')),
                         (info['format'], info['backing-filename']))
        self.assertEqual(1, len(self.bitmaps(disk)))
        self.assertEqual(self.bitmaps(disk), self.bitmaps(eph))
        self.assertIn('disks restored: vdb', self.svc.agent.log())

        # Nova starts it; the next delta is an increment on X holding the
        # new writes of both disks only.
        dom.create()
        vm = self.attach(dom_uuid)
        self.assert_increments_on(x, vm, eph_expected)
        self.unprotect()

    def assert_increments_on(self, point, vm, eph_expected) -> None:
        """New writes into both disks: the restore points taken after
        them are increments on ``point`` holding those writes alone."""
        self.write_both(vm, eph_expected, [(9 * MiB, 64 * KiB, 0x39)],
                        [(5 * MiB, 64 * KiB, 0x45)])
        written = db_engine.to_datetime(time.time())
        following = self.points_after(
            point, lambda p: p.taken_at is not None and p.taken_at > written,
            'taken after the writes')
        self.assertEqual(point.id, following[0].parent_id)
        self.assertTrue(all(p.changed_bytes <= 128 * KiB
                            for p in following),
                        [p.changed_bytes for p in following])
        self.assert_point_is(following[-1].id, self.expected.path,
                             eph_expected.path)

    def test_multi_disk_switched_on_takes_a_full_backup(self):
        """An agent that shipped the root alone ([agent] multi_disk off, or
        a manager before RPC 1.5) restarted with it on: a libvirt backup
        holds the changed blocks only, so the first one of both disks
        cannot be sent whole; the agent drops it and takes a full one."""
        dom_uuid, dom, disk, eph, eph_expected = self.two_disk_server(
            agent_options={'multi_disk': False})
        vm = self.attach(dom_uuid)
        first = self.wait_points(1)[0]
        self.assertIsNone(first.disks)
        self.write_both(vm, eph_expected, [(3 * MiB, 64 * KiB, 0x31)],
                        [(0, 64 * KiB, 0), (2 * MiB, MiB, 0x41)])
        written = db_engine.to_datetime(time.time())
        self.points_after(
            first, lambda p: p.taken_at is not None and p.taken_at > written,
            'taken after the writes')
        self.svc.agent.stop()
        self.svc.options['agent']['multi_disk'] = True
        services.write_config(self.svc.conf_file, self.svc.options)
        self.svc.agent.start()
        both = self.wait_for(lambda: [p for p in self.points() if p.disks],
                             'a restore point of both disks')[0]
        self.assertIn('taking a full snapshot', self.svc.agent.log())
        self.assert_point_is(both.id, self.expected.path, eph_expected.path)
        # Increments of both disks from then on.
        self.assert_increments_on(both, vm, eph_expected)
        self.unprotect()
