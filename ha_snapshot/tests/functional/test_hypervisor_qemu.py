"""The qemu hypervisor driver against real QEMU processes.

Writes go in through qemu-io in the monitor (no guest); what the frozen
overlays hold is read with the project's own image code (inspect +
own_extents, null backing); the guest view after the VM quit is compared
with a raw image built by applying the same writes.
"""

import importlib.metadata
import json
import os
import queue
import signal
import sys
import threading
import time

from ha_snapshot.conf import hypervisor as hypervisor_conf
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import base as hv
from ha_snapshot.hypervisor import blockgraph
from ha_snapshot.hypervisor import hmp
from ha_snapshot.hypervisor import impl_qemu
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.image import ranges
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import qemu as qemu_fixture

KiB, MiB = base.KiB, base.MiB
SIZE = 64 * MiB


class Expected:
    """The guest view the writes should produce, as a raw file."""

    def __init__(self, path, size):
        self.path = path
        with open(path, 'wb') as f:
            f.truncate(size)

    def write(self, offset, length, pattern):
        with open(self.path, 'r+b') as f:
            f.seek(offset)
            f.write(bytes([pattern]) * length)


def merged(extents):
    """[(offset, length)] of data extents, adjacent ones merged."""
    out = []
    for e in sorted(extents):
        off, length = e[0], e[1]
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((off, length))
    return out


class QemuTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir)
        hypervisor_conf.register_opts(self.conf)
        self.conf.set_override('command_timeout', 20, group='qemu')
        self.conf.set_override('commit_timeout', 120, group='qemu')
        self.driver = impl_qemu.QemuDriver(self.conf)

    def start(self, name='vm', **kwargs):
        return self.useFixture(qemu_fixture.QemuVM(
            self.driver, self.tmp, name, **kwargs)).vm

    def write(self, vm, disk, expected, writes):
        for offset, length, pattern in writes:
            self.driver.write(vm, disk, offset, length, pattern)
            expected.write(offset, length, pattern)

    def own_data(self, path):
        info = image_inspect.inspect(
            path, 'qcow2', max_virtual_size=self.conf.image.max_virtual_size,
            allow_backing=True)
        extents = ranges.own_extents(info)
        self.assertEqual({ranges.DATA}, {e.kind for e in extents} or
                         {ranges.DATA})
        return merged((e.offset, e.length) for e in extents)

    def node_names(self, vm):
        """Format nodes in use (not the overlays prepared ahead, which are
        opened with a null backing and so have a json: name)."""
        return {n['node-name'] for n in self.driver.qmp(
            vm, 'query-named-block-nodes', {'flat': True})
            if n['drv'] in ('qcow2', 'raw')
            and not n['file'].startswith('json:')}

    def assert_guest_view(self, path, expected):
        flat = base.flatten(path, path + '.view.raw')
        self.assertTrue(base.same_image(flat, expected.path),
                        'guest view of %s differs from the writes' % path)


class SnapshotCycleTest(QemuTestCase):

    def _cycle(self, machine, disk_name):
        vm = self.start(machine=machine)
        disks = self.driver.disks(vm)
        self.assertEqual([disk_name], [d.name for d in disks])
        base_image = disks[0].active
        self.assertFalse(base_image.owned)
        expected = Expected(self.path('expected.raw'), SIZE)

        w1 = [(0, 64 * KiB, 0x11), (1 * MiB, 128 * KiB, 0x22)]
        self.write(vm, disk_name, expected, w1)
        s1 = self.driver.snapshot(vm)
        f1 = s1.disk(disk_name)
        self.assertEqual(base_image, f1.frozen)
        self.assertIsNone(f1.backing)
        self.assertFalse(f1.committable)
        self.assertTrue(f1.active.owned)
        self.assertTrue(os.path.isabs(f1.active.path))
        self.assertEqual([(0, 64 * KiB), (1 * MiB, 128 * KiB)],
                         self.own_data(f1.frozen.path))
        self.assertLess(s1.transaction_seconds, s1.qmp_seconds + 1e-9)

        w2 = [(4 * MiB, 64 * KiB, 0x33), (0, 64 * KiB, 0x44)]
        self.write(vm, disk_name, expected, w2)
        s2 = self.driver.snapshot(vm)
        f2 = s2.disk(disk_name)
        self.assertEqual(f1.active, f2.frozen)
        self.assertEqual(base_image, f2.backing)
        self.assertTrue(f2.committable)
        # The frozen overlay holds exactly the writes since s1.
        self.assertEqual([(0, 64 * KiB), (4 * MiB, 64 * KiB)],
                         self.own_data(f2.frozen.path))

        w3 = [(8 * MiB, 192 * KiB, 0x55)]
        self.write(vm, disk_name, expected, w3)
        s3 = self.driver.snapshot(vm)
        f3 = s3.disk(disk_name)
        self.assertEqual([(8 * MiB, 192 * KiB)],
                         self.own_data(f3.frozen.path))
        self.assertEqual(f2.active, f3.frozen)
        self.assertEqual(f2.frozen, f3.backing)

        # The base is never committed; the newer overlay waits its turn.
        r = self.driver.commit(vm, s1)
        self.assertEqual([False], [x.committed for x in r])
        self.assertRaises(hv.CommitOrderError, self.driver.commit, vm, s3)
        r = self.driver.commit(vm, f2)
        self.assertEqual([True], [x.committed for x in r])
        self.assertEqual(base_image, r[0].base)
        self.assertFalse(os.path.exists(f2.frozen.path))
        self.assertEqual(
            {f3.active.node, f3.frozen.node, base_image.node},
            self.node_names(vm))
        chain = self.driver.disks(vm)[0].chain
        self.assertEqual([f3.active.node, f3.frozen.node, base_image.node],
                         [i.node for i in chain])
        # Again (an agent retrying after a lost reply): nothing to do.
        r = self.driver.commit(vm, f2)
        self.assertEqual([False], [x.committed for x in r])
        r = self.driver.commit(vm, s3)
        self.assertEqual([True], [x.committed for x in r])
        self.assertEqual([f3.active.node, base_image.node],
                         [i.node for i in self.driver.disks(vm)[0].chain])

        w4 = [(8 * MiB + 64 * KiB, 64 * KiB, 0x66), (SIZE - 64 * KiB,
                                                     64 * KiB, 0x77)]
        self.write(vm, disk_name, expected, w4)
        events = queue.Queue()
        self.driver.subscribe(vm, events.put)
        self.assertEqual(0, self.driver.quit(vm))
        # NOTE: the QMP reader (SHUTDOWN) and the process watcher
        # (PROCESS_EXITED) are two threads: either may come first.
        kinds, wanted = set(), {'SHUTDOWN', hv.PROCESS_EXITED}
        deadline = time.monotonic() + 30
        while not wanted <= kinds and time.monotonic() < deadline:
            try:
                kinds.add(events.get(timeout=1).kind)
            except queue.Empty:
                pass
        self.assertEqual(wanted, wanted & kinds)
        # The commit wrote the base's absolute name into the overlay above.
        info = json.loads(base.qemu_img('info', '--output=json',
                                        f3.active.path))
        self.assertEqual(base_image.path, info['backing-filename'])
        self.assertEqual(base_image.format, info['backing-filename-format'])
        self.assert_guest_view(f3.active.path, expected)

    def test_cycle_machine_none(self):
        self._cycle('none', 'disk0')

    def test_cycle_q35_virtio_blk(self):
        self._cycle('q35', 'vd0')

    def test_two_disks_one_transaction(self):
        vm = self.start(disks=2)
        names = [d.name for d in self.driver.disks(vm)]
        self.assertEqual(['disk0', 'disk1'], names)
        calls = []
        qmp = self.driver.qmp

        def spy(vm, command, arguments=None, timeout=None):
            calls.append((command, arguments))
            return qmp(vm, command, arguments, timeout)
        self.driver.qmp = spy
        self.addCleanup(delattr, self.driver, 'qmp')
        self.driver.write(vm, 'disk1', 0, 32 * MiB, 0x5a)
        s1 = self.driver.snapshot(vm)
        txn = [args for command, args in calls if command == 'transaction']
        self.assertEqual(1, len(txn))
        self.assertEqual(
            sorted((s1.disk(n).frozen.node, s1.disk(n).active.node)
                   for n in names),
            sorted((a['data']['node'], a['data']['overlay'])
                   for a in txn[0]['actions']))
        self.driver.write(vm, 'disk1', 0, 32 * MiB, 0x5b)
        s2 = self.driver.snapshot(vm)
        # A block job on disk1 that the driver did not start: QEMU refuses
        # the snapshot of disk1, so disk0 must not be snapshotted either.
        self.driver.qmp(vm, 'block-commit', {
            'job-id': 'foreign', 'device': s2.disk('disk1').active.node,
            'top-node': s2.disk('disk1').frozen.node,
            'base-node': s2.disk('disk1').backing.node, 'speed': MiB})
        before = (self.driver.disks(vm), self.node_names(vm),
                  sorted(os.listdir(self.tmp)))
        e = self.assertRaises(hv.CommitInProgress, self.driver.snapshot, vm)
        self.assertIn('block job', str(e))
        self.assertEqual(before, (self.driver.disks(vm),
                                  self.node_names(vm),
                                  sorted(os.listdir(self.tmp))))
        self.driver.qmp(vm, 'block-job-cancel', {'device': 'foreign',
                                                 'force': True})
        deadline = time.monotonic() + 10
        while self.driver.qmp(vm, 'query-block-jobs'):
            self.assertLess(time.monotonic(), deadline)
            threading.Event().wait(0.05)
        s3 = self.driver.snapshot(vm)
        self.assertEqual(names, [d.disk for d in s3.disks])
        results = self.driver.commit(vm, s2)
        self.assertEqual([True, True], [r.committed for r in results])


class SerialisationTest(QemuTestCase):

    def test_snapshot_refused_then_serialised_while_commit_runs(self):
        self.conf.set_override('commit_speed', 8 * MiB, group='qemu')
        vm = self.start()
        running = threading.Event()
        self.driver.subscribe(
            vm, lambda e: e.data.get('status') == 'running' and running.set(),
            events=['JOB_STATUS_CHANGE'])
        self.driver.snapshot(vm)
        self.driver.write(vm, 'disk0', 0, 16 * MiB, 0x21)
        s2 = self.driver.snapshot(vm)
        done = []
        worker = threading.Thread(
            target=lambda: done.append(self.driver.commit(vm, s2)))
        worker.start()
        self.addCleanup(worker.join, 60)
        self.assertTrue(running.wait(10))
        e = self.assertRaises(hv.CommitInProgress, self.driver.snapshot, vm)
        self.assertIn('commit', str(e))
        t0 = time.monotonic()
        s3 = self.driver.snapshot(vm, wait=60)
        waited = time.monotonic() - t0
        self.assertTrue(done, 'the snapshot did not wait for the commit')
        self.assertTrue(done[0][0].committed)
        self.assertGreater(waited, 0.5)
        self.assertEqual(s2.disk('disk0').active, s3.disk('disk0').frozen)
        self.assertEqual(s2.disk('disk0').backing, s3.disk('disk0').backing)


    def test_vm_killed_during_commit(self):
        self.conf.set_override('commit_speed', 4 * MiB, group='qemu')
        vm = self.start()
        self.driver.snapshot(vm)
        self.driver.write(vm, 'disk0', 0, 32 * MiB, 0x21)
        s2 = self.driver.snapshot(vm)
        running = threading.Event()
        self.driver.subscribe(
            vm, lambda e: e.data.get('status') == 'running' and running.set(),
            events=['JOB_STATUS_CHANGE'])
        threading.Thread(target=lambda: running.wait(10) and os.kill(
            vm.pid, signal.SIGKILL), daemon=True).start()
        t0 = time.monotonic()
        self.assertRaises((hv.CommitFailed, hv.VMNotRunning),
                          self.driver.commit, vm, s2)
        self.assertLess(time.monotonic() - t0, 5)
        # Nothing was deleted: the overlay is still there to commit later.
        self.assertTrue(os.path.exists(s2.disk('disk0').frozen.path))


class LifecycleTest(QemuTestCase):

    def test_sigkill_reports_process_exited(self):
        vm = self.start()
        got = queue.Queue()
        self.driver.subscribe(vm, got.put, events=[hv.PROCESS_EXITED])
        t0 = time.monotonic()
        os.kill(vm.pid, signal.SIGKILL)
        event = got.get(timeout=5)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertEqual(vm.pid, event.data['pid'])
        self.assertEqual(-signal.SIGKILL, event.data['returncode'])
        self.assertFalse(self.driver.is_alive(vm))
        self.assertRaises(hv.VMNotRunning, self.driver.snapshot, vm)

    def test_command_timeout_names_the_command(self):
        vm = self.start()
        os.kill(vm.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, vm.pid, signal.SIGCONT)
        t0 = time.monotonic()
        e = self.assertRaises(hv.QmpTimeout, self.driver.qmp, vm,
                              'query-status', timeout=0.3)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertIn('query-status', str(e))
        self.assertIn('0.3', str(e))
        os.kill(vm.pid, signal.SIGCONT)
        # The late reply is dropped; the connection goes on.
        self.assertEqual('running',
                         self.driver.qmp(vm, 'query-status')['status'])
        self.assertTrue(self.driver.is_alive(vm))

    def test_stop_and_resume_events_reach_subscribers(self):
        vm = self.start()
        got = queue.Queue()

        def on_event(event):
            # Callbacks may call the driver (they run on their own thread).
            status = self.driver.qmp(vm, 'query-status')['status']
            got.put((event.kind, status))
        sub = self.driver.subscribe(vm, on_event, events=['STOP', 'RESUME'])
        self.driver.qmp(vm, 'stop')
        self.assertEqual(('STOP', 'paused'), got.get(timeout=5))
        self.driver.qmp(vm, 'cont')
        self.assertEqual(('RESUME', 'running'), got.get(timeout=5))
        sub.cancel()
        self.driver.qmp(vm, 'stop')
        self.driver.qmp(vm, 'query-status')
        self.assertTrue(got.empty())

    def test_start_failure_names_the_log(self):
        bogus = self.path('bogus.qcow2')
        with open(bogus, 'w') as f:
            f.write('not an image\n')
        spec = hv.VMSpec(name='bad', disks=(hv.DiskSpec(bogus),),
                         qmp_path=self.path('bad.qmp'),
                         log_path=self.path('bad.log'))
        e = self.assertRaises(hv.VMStartFailed, self.driver.start, spec)
        self.assertIn('bad.log', str(e))
        self.assertIn('qcow2', str(e))
        self.assertFalse(os.path.exists(self.path('bad.qmp')))

    def test_missing_binary_names_the_package(self):
        self.conf.set_override('binary', '/nonexistent/qemu-system-x86_64',
                               group='qemu')
        spec = hv.VMSpec(name='x', disks=(hv.DiskSpec(self.path('d')),),
                         qmp_path=self.path('x.qmp'),
                         log_path=self.path('x.log'))
        e = self.assertRaises(hv.QemuNotFound, self.driver.start, spec)
        self.assertIn('qemu-system-x86', str(e))
        e = self.assertRaises(qemu_fixture.QemuUnavailable,
                              qemu_fixture.require_qemu,
                              '/nonexistent/qemu-system-x86_64')
        self.assertIn('"qemu-system-x86"', str(e))

    def test_attach_detach_and_restart(self):
        fixture = self.useFixture(qemu_fixture.QemuVM(self.driver, self.tmp))
        vm = fixture.vm
        s1 = self.driver.snapshot(vm)
        self.driver.write(vm, 'disk0', 0, MiB, 0x31)
        s2 = self.driver.snapshot(vm)
        # Leftover of an interrupted snapshot: an overlay never switched to.
        orphan = self.path('orphan.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', orphan, str(SIZE))
        self.driver.qmp(vm, 'blockdev-add', {
            'driver': 'qcow2', 'node-name': 'hsnap-abcdef-1',
            'backing': None,
            'file': {'driver': 'file', 'filename': orphan}})
        before = self.driver.disks(vm)
        self.driver.detach(vm)
        # QMP serves one client at a time: a second one gets no greeting.
        other = impl_qemu.QemuDriver(self.conf)
        vm2 = other.attach('vm', vm.qmp_path, vm.pid)
        self.addCleanup(other.detach, vm2)
        self.conf.set_override('connect_timeout', 0.5, group='qemu')
        e = self.assertRaises(hv.VMAttachFailed, self.driver.attach, 'vm',
                              vm.qmp_path, vm.pid)
        self.assertIn('another client', str(e))
        self.assertEqual(before, other.disks(vm2))
        self.assertNotIn('hsnap-abcdef-1', self.node_names_of(other, vm2))
        self.assertFalse(os.path.exists(orphan))
        r = other.commit(vm2, s2)
        self.assertEqual([True], [x.committed for x in r])
        self.assertEqual([False], [x.committed for x in
                                   other.commit(vm2, s1)])
        other.detach(vm2)
        e = self.assertRaises(hv.VMAttachFailed, self.driver.attach, 'vm',
                              vm.qmp_path, os.getpid())
        self.assertIn('served by process %d' % vm.pid, str(e))
        vm3 = self.driver.attach('vm', vm.qmp_path, vm.pid,
                                 log_path=vm.log_path)
        fixture.vm = vm3
        self.driver.quit(vm3)
        # The recovery action "restart": the VM on the disk it had.
        vm4 = fixture.restart([s2.disk('disk0').active.path])
        chain = self.driver.disks(vm4)[0].chain
        self.assertEqual([s2.disk('disk0').active.path,
                          s1.disk('disk0').frozen.path],
                         [i.path for i in chain])
        # Protection starts again from there: that image is the new base.
        self.assertFalse(chain[0].owned)
        self.assertEqual(chain[0], self.driver.snapshot(vm4).disks[0].frozen)

    def node_names_of(self, driver, vm):
        return {n['node-name'] for n in driver.qmp(
            vm, 'query-named-block-nodes', {'flat': True})}


class MonitorTest(QemuTestCase):

    def test_hostile_hmp_error_is_raised_clean(self):
        vm = self.start()
        e = self.assertRaises(
            hv.HmpError, hmp.hmp, self.driver, vm,
            'qemu-io no\x1b[2Jsuch' + 'x' * 1000 + ' "read 0 512"')
        text = str(e)
        self.assertIn('Cannot find device', text)
        self.assertNotIn('\x1b', text)
        self.assertIn('\\x1b', text)
        self.assertLess(len(text), 1000)
        self.assertIn('\x1b', e.kwargs['output'])

    def test_qemu_io_failures(self):
        vm = self.start()
        s1 = self.driver.snapshot(vm)
        # HMP-level: the frozen base is read-only now.
        e = self.assertRaises(hv.HmpError, hmp.qemu_io, self.driver, vm,
                              s1.disk('disk0').frozen.node,
                              'write -P 0x11 0 512')
        self.assertIn('read-only', str(e))
        # qemu-io's own failure: only on QEMU's stdout (the log).
        e = self.assertRaises(hv.HmpError, hmp.qemu_io, self.driver, vm,
                              s1.disk('disk0').active.node,
                              'write -P 0x11 %d 512' % (SIZE * 2))
        self.assertIn('write failed', str(e))
        # Refused before QEMU sees it.
        self.assertRaises(hv.HmpError, hmp.qemu_io, self.driver, vm,
                          'disk0" "write 0 1', 'read 0 512')
        self.assertRaises(hv.HypervisorError, self.driver.write, vm,
                          'disk0', SIZE - 512, 1024)
        self.assertRaises(hv.DiskNotFound, self.driver.write, vm, 'nope',
                          0, 512)

    def test_blockstats(self):
        for machine, disk, accounted in (('none', 'disk0', False),
                                         ('q35', 'vd0', True)):
            vm = self.start('vm-' + machine, machine=machine)
            self.driver.write(vm, disk, 2 * MiB, 64 * KiB, 0x42)
            stats = self.driver.blockstats(vm)
            self.assertEqual([disk], list(stats))
            st = stats[disk]
            self.assertEqual(accounted, st.accounted)
            self.assertEqual(2 * MiB + 64 * KiB, st.wr_highest_offset)
            for field in ('rd_bytes', 'wr_bytes', 'wr_operations',
                          'flush_operations'):
                self.assertIsInstance(getattr(st, field), int)


class BlockGraphTest(base.TestCase):
    """Disk discovery from captured QMP answers (QEMU 7.2)."""

    @staticmethod
    def node(name, path, backing=None, ro=False, null_backing=False,
             header_backing=None):
        image = {'filename': path, 'virtual-size': SIZE}
        if backing or header_backing:
            image['full-backing-filename'] = backing or header_backing
        return {'node-name': name, 'drv': 'qcow2', 'ro': ro,
                'file': ('json:' + json.dumps({
                    'backing': None, 'driver': 'qcow2',
                    'file': {'driver': 'file', 'filename': path}})
                    if null_backing else path),
                'backing_file': backing, 'image': image}

    def test_chain_base_and_overlays(self):
        nodes = [
            # An overlay prepared ahead: its header names the active image
            # but it is open with a null backing; it is no disk.
            self.node('hsnap-abcdef-3', '/d/a.3.qcow2', null_backing=True,
                      header_backing='/d/a.2.qcow2'),
            self.node('hsnap-abcdef-2', '/d/a.2.qcow2', '/d/a.1.qcow2'),
            self.node('hsnap-abcdef-1', '/d/a.1.qcow2', '/d/a.qcow2',
                      ro=True),
            self.node('disk0', '/d/a.qcow2', '/d/shared.raw', ro=True),
            dict(self.node('#block1', '/d/shared.raw', ro=True), drv='raw'),
            {'node-name': '#block2', 'drv': 'file', 'file': '/d/a.qcow2'},
            # A committed overlay not deleted yet.
            self.node('hsnap-abcdef-0', '/d/a.0.qcow2', '/d/a.qcow2',
                      ro=True),
        ]
        blocks = [{'device': '', 'qdev': '/machine/peripheral/vd0/'
                   'virtio-backend',
                   'inserted': {'node-name': 'hsnap-abcdef-2'}}]
        [disk] = blockgraph.disks_from(nodes, blocks)
        self.assertEqual('vd0', disk.name)
        self.assertEqual(['hsnap-abcdef-2', 'hsnap-abcdef-1', 'disk0',
                          '#block1'], [i.node for i in disk.chain])
        self.assertEqual([True, True, False, False],
                         [i.owned for i in disk.chain])
        self.assertEqual('disk0', disk.base.node)
        self.assertEqual(['hsnap-abcdef-0', 'hsnap-abcdef-3'],
                         blockgraph.orphans(nodes, [disk]))
        [bare] = blockgraph.disks_from(nodes, [])
        self.assertEqual('disk0', bare.name)
        self.assertIsNone(bare.device)

    def test_overlay_names(self):
        image = hv.Image('disk0', '/d/vm-disk0.qcow2', 'qcow2')
        node = blockgraph.own_node('abcdef', 12)
        self.assertRegex(node, blockgraph.OWN_NODE)
        self.assertLessEqual(len(node), 31)
        self.assertEqual('/d/vm-disk0.hsnap-abcdef-12.qcow2',
                         blockgraph.overlay_path(image, node))
        self.assertEqual('/o/vm-disk0.hsnap-abcdef-12.qcow2',
                         blockgraph.overlay_path(image, node, '/o'))


class LoaderTest(QemuTestCase):

    def test_unknown_driver(self):
        e = self.assertRaises(hv.HypervisorDriverNotFound,
                              hypervisor.get_driver, self.conf, 'nope')
        self.assertIn("'nope'", str(e))
        self.assertIn('ha_snapshot.hypervisor', str(e))

    def test_qemu_driver_by_name(self):
        eps = importlib.metadata.entry_points(group=hypervisor.NAMESPACE)
        if 'qemu' not in eps.names:
            # NOTE: until setup.cfg declares it, declare it here the way an
            # installed distribution does.
            info = self.path('site', 'ha_snapshot_qemu_test-0.dist-info')
            os.makedirs(info)
            with open(os.path.join(info, 'METADATA'), 'w') as f:
                f.write('Metadata-Version: 2.1\nName: ha-snapshot-qemu-test'
                        '\nVersion: 0\n')
            with open(os.path.join(info, 'entry_points.txt'), 'w') as f:
                f.write('[%s]\nqemu = ha_snapshot.hypervisor.impl_qemu:'
                        'QemuDriver\n' % hypervisor.NAMESPACE)
            sys.path.insert(0, self.path('site'))
            self.addCleanup(sys.path.remove, self.path('site'))
        driver = hypervisor.get_driver(self.conf, 'qemu')
        self.assertIsInstance(driver, impl_qemu.QemuDriver)
        self.assertIsInstance(driver, hv.HypervisorDriver)
