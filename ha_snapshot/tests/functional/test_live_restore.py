"""Live restore against real QEMU, a real file store and the agent's NBD
server (ha_snapshot/agent/live_restore.py).

A restore point with known content (random chunks, a pattern area, zeros
elsewhere) is merged into a file store; its chunks are served as the
manager serves them (base64 of ``store.read_chunk``). The VM is a bare
``-machine none`` QEMU: what is checked is the disk. The stream is slowed
with block-stream's ``speed`` so that a test can act while it runs,
waiting for the job to show in ``query-block-jobs``, never by sleeping.
"""

import base64
import os
import subprocess
import tempfile
import threading
import time

import fixtures

from ha_snapshot.agent import live_restore
from ha_snapshot.conf import hypervisor as hypervisor_conf
from ha_snapshot import delta_images
from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv
from ha_snapshot.hypervisor import hmp
from ha_snapshot.hypervisor import impl_qemu
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.storage import store as store_mod
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import qemu as qemu_fixture

MiB = base.MiB
SIZE = 256 * MiB
SPEED = 12 * MiB


def nbd_dirs() -> set:
    # NOTE: the test's own temporary directory (setUp): tests running
    # beside it in other workers make and remove their own.
    return {d for d in os.listdir(tempfile.gettempdir())
            if d.startswith('hs-nbd-')}


class LiveRestoreTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir,
                                   agent__live_restore_retries=1,
                                   agent__retry_initial=0.05,
                                   agent__live_restore_reconnect_delay=1,
                                   agent__live_restore_timeout=60)
        hypervisor_conf.register_opts(self.conf)
        self.conf.set_override('command_timeout', 20, group='qemu')
        self.driver = impl_qemu.QemuDriver(self.conf)
        qemu_fixture.require_qemu(self.driver.opts.binary)
        self.store = store_mod.RecoveryStore.from_conf(self.conf)
        self.instance = 'b7c5b6a2-3d61-4d0e-9a53-51a1c1a3e0aa'
        # NOTE: a VM name and a temporary directory of this test's own:
        # the other tests of the class may run at the same time.
        self.name = 'lr-%s' % os.urandom(4).hex()
        tmp = self.path('tmp')
        os.makedirs(tmp)
        self.useFixture(fixtures.MonkeyPatch('tempfile.tempdir', tmp))
        self.vm = None
        self.addCleanup(self._kill)

    def _kill(self):
        if self.vm is not None and not self.vm.detached:
            self.driver.kill(self.vm)

    def restore_point(self):
        """A restore point of SIZE bytes: 8 MiB of random data at 0, 16 MiB
        of 0x5a at 100 MiB, zeros elsewhere; (rp, its raw image)."""
        raw = self.path('rp.raw')
        with open(raw, 'wb') as f:
            f.truncate(SIZE)
            f.write(os.urandom(8 * MiB))
            f.seek(100 * MiB)
            f.write(b'\x5a' * (16 * MiB))
        info = image_inspect.inspect(
            raw, 'raw', max_virtual_size=self.conf.image.max_virtual_size)
        rp = self.store.merge(delta_images.from_image(
            info, instance=self.instance, project='p', sequence=0,
            parent=None, max_part_bytes=self.conf.image.max_part_bytes,
            max_part_extents=self.conf.image.max_part_extents))
        return rp, raw

    def source(self, rp, fail=None):
        """(manifest, get_chunk) as the manager answers them; ``fail``: an
        Event after which every chunk read fails (the source is gone)."""
        manifest = {'id': rp.id, 'virtual_size': rp.virtual_size,
                    'chunk_size': rp.chunk_size,
                    'chunks': {str(k): v for k, v in rp.chunks.items()}}

        def get_chunk(index):
            if fail is not None and fail.is_set():
                raise exception.StorageError('the source was killed')
            return base64.b64encode(self.store.read_chunk(rp, index)).decode()
        return manifest, get_chunk

    def start_vm(self, disk_path):
        self.vm = self.driver.start(hv.VMSpec(
            name=self.name, disks=(hv.DiskSpec(disk_path),),
            qmp_path=self.path('lr.qmp'), log_path=self.path('lr.log')))
        self.started.set()
        return self.vm

    def run_restore(self, manifest, get_chunk, disk):
        """restore() on a thread; returns (thread, box with its outcome or
        error)."""
        self.sockets = nbd_dirs()
        self.started = threading.Event()
        box = {}

        def run():
            try:
                box['outcome'] = live_restore.restore(
                    self.conf, self.driver, manifest, get_chunk, disk,
                    self.start_vm, t0=time.monotonic(), name=self.name,
                    speed=SPEED)
            except Exception as e:
                box['error'] = e
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        # NOTE: a restore that failed before the VM started says why.
        deadline = time.monotonic() + 60
        while not self.started.wait(0.1) and 'error' not in box:
            self.assertLess(time.monotonic(), deadline, 'the VM to start')
        self.assertNotIn('error', box)
        return thread, box

    def wait_streaming(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            jobs = self.driver.qmp(self.vm, 'query-block-jobs')
            if any(j.get('type') == 'stream' and j.get('offset', 0) > 0
                   for j in jobs):
                return jobs
            time.sleep(0.01)
        self.fail('no stream job made progress within 20 s')

    def test_live_restore_equals_restore_point_plus_writes(self):
        rp, raw = self.restore_point()
        manifest, get_chunk = self.source(rp)
        disk = self.path('live.qcow2')
        thread, box = self.run_restore(manifest, get_chunk, disk)
        self.wait_streaming()
        # The guest reads the restore point while the stream runs, also
        # where it has not been copied yet (the pattern area is last).
        hmp.qemu_io(self.driver, self.vm, 'disk0', 'read -P 0x5a 110M 1M')
        # Writes during the stream stay where they were made: into data
        # not copied yet, and into a zero area.
        self.driver.write(self.vm, 'disk0', 104 * MiB + 4096, 65536, 0x77)
        self.driver.write(self.vm, 'disk0', 200 * MiB, 2 * MiB, 0x66)
        thread.join(60)
        self.assertNotIn('error', box, box.get('error'))
        outcome = box['outcome']
        self.assertEqual(1, outcome.stream_attempts)
        self.assertLess(outcome.recover_seconds, outcome.restored_seconds)
        # NOTE: a chunk the guest's reads pushed out of the cache may be
        # fetched again.
        self.assertGreaterEqual(outcome.fetched_chunks, len(rp.chunks))
        # The overlay stands alone: no backing in the graph nor the file.
        self.assertIsNone(live_restore.hv_live.backing_of(
            self.driver, self.vm, 'disk0'))
        self.assertEqual(self.sockets, nbd_dirs(), 'the NBD server '
                         'stopped and its directory went')
        with open(raw, 'r+b') as f:
            f.seek(104 * MiB + 4096)
            f.write(b'\x77' * 65536)
            f.seek(200 * MiB)
            f.write(b'\x66' * (2 * MiB))
        # On disk already while the VM runs (flushed), and after it quit.
        for running in (True, False):
            r = subprocess.run(['qemu-img', 'compare', '-U', '-f', 'raw',
                                '-F', 'qcow2', raw, disk],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(0, r.returncode, 'the restored disk (VM '
                             'running: %s) differs from the restore point '
                             'plus the writes made during the stream: %s'
                             % (running, r.stdout + r.stderr))
            if running:
                self.driver.quit(self.vm)
        info = subprocess.run(['qemu-img', 'info', '--output=json', disk],
                              capture_output=True, text=True, check=True)
        self.assertNotIn('backing-filename', info.stdout)

    def test_source_killed_mid_stream_fails_the_restore(self):
        rp, _raw = self.restore_point()
        dead = threading.Event()
        manifest, get_chunk = self.source(rp, fail=dead)
        disk = self.path('live.qcow2')
        thread, box = self.run_restore(manifest, get_chunk, disk)
        self.wait_streaming()
        dead.set()
        thread.join(60)
        self.assertFalse(thread.is_alive())
        self.assertNotIn('outcome', box)
        error = box['error']
        self.assertIsInstance(error, exception.LiveRestoreFailed)
        msg = str(error)
        self.assertIn('nothing was restored', msg)
        self.assertIn('the stream failed 2 time(s)', msg)
        self.assertIn('the source was killed', msg)
        self.assertIn('is lost', msg)
        # The VM is stopped and the partial disk gone.
        self.assertTrue(self.vm.process.exited())
        self.assertFalse(os.path.exists(disk))
        self.assertEqual(self.sockets, nbd_dirs())
