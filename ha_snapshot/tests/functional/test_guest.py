"""The real test guest: built from Debian packages, booted under TCG,
snapshotted live by the qemu driver, its disk checked after recovery.

What a user of an HA product cares about: the recovered disk's file system
is clean after journal replay and holds every record the guest reported
durable before the snapshot. The check is shown able to fail: a record
corrupted on a copy is reported by the host check and by the guest's own
verify boot.
"""

import json
import os
import socket
import subprocess
import time

from testtools import content

from ha_snapshot.conf import hypervisor as hypervisor_conf
from ha_snapshot import exception
from ha_snapshot.guest import build
from ha_snapshot.guest import disk as disk_mod
from ha_snapshot.guest import packages
from ha_snapshot.guest import records
from ha_snapshot.hypervisor import impl_qemu
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import guest as guest_fixture

BOOT_TIMEOUT = 90
# NOTE: TCG on 2 shared cores: ~50-200 records/s; waits are generous.
RECORD_TIMEOUT = 60


class GuestTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir)
        hypervisor_conf.register_opts(self.conf)
        self.conf.set_override('command_timeout', 30, group='qemu')
        self.driver = impl_qemu.QemuDriver(self.conf)
        self.image = guest_fixture.image()

    def guest(self, name='guest', **kwargs):
        return self.useFixture(guest_fixture.Guest(
            self.driver, self.tmp, self.image, name, **kwargs))

    def note(self, name, value):
        self.addDetail(name, content.text_content(json.dumps(value)))

    def verify_boot(self, disk, name, disk_format='raw'):
        """Boot ``disk`` in verify mode: its VERIFY and SQLITE lines."""
        g = self.guest(name, disk=disk, disk_format=disk_format,
                       mode='verify')
        i, m = g.console.wait_for(r'VERIFY (ok|bad).*', BOOT_TIMEOUT)
        _, db = g.console.wait_for(r'SQLITE (ok|bad).*', BOOT_TIMEOUT, i)
        self.assertTrue(g.vm.process.wait(BOOT_TIMEOUT),
                        'the verify guest did not power off')
        return m.group(0), db.group(0)

    def raw_copy(self, path, name):
        out = self.path(name)
        base.qemu_img('convert', '-O', 'raw', path, out)
        return out


class BuildTest(GuestTestCase):

    def test_cold_and_warm_build(self):
        # NOTE: the packages come from the shared cache (no download here);
        # the images are built anew in a fresh cache directory.
        cache = self.path('cache')
        os.makedirs(cache)
        os.symlink(os.path.join(guest_fixture.cache_dir(), 'debs'),
                   os.path.join(cache, 'debs'))
        cold = build.build(cache)
        warm = build.build(cache)
        self.note('build-seconds', {'cold': cold.seconds,
                                    'warm': warm.seconds,
                                    'sizes': cold.sizes()})
        self.assertFalse(cold.cached)
        self.assertTrue(warm.cached)
        self.assertEqual(cold.key, warm.key)
        self.assertEqual(self.image.key, cold.key)
        self.assertLess(warm.seconds, cold.seconds)
        raw = self.raw_copy(cold.disk, 'disk.raw')
        parts = disk_mod.partitions(raw)
        self.assertEqual([(1, disk_mod.FAT16, True), (2, disk_mod.LINUX,
                                                      False)],
                         [(p.index, p.type, p.bootable) for p in parts])
        check = records.check_recovered(raw)
        self.assertTrue(check.fsck_clean, check.fsck_output)
        self.assertEqual(0, check.records.records)
        # NOTE: the guest makes its database at its first boot.
        self.assertIsNone(check.database)
        self.assertIn('linux-image-cloud-amd64', cold.packages)
        self.assertIn('qemu-guest-agent', cold.packages)

    def test_unknown_package_is_named(self):
        e = self.assertRaises(
            exception.GuestPackageNotFound, build.build, self.path('c'),
            kernel_package='linux-image-ha-snapshot-no-such-kernel')
        self.assertIn('linux-image-ha-snapshot-no-such-kernel', str(e))
        self.assertIn('apt-get update', str(e))
        self.assertFalse(os.path.exists(self.path('c', 'images')))

    def test_failed_download_is_named(self):
        e = self.assertRaises(
            exception.GuestPackageFetchFailed, packages.download,
            [packages.Package('busybox-static', '0.0-no-such-version',
                              'amd64')], self.path('debs'))
        self.assertIn('busybox-static=0.0-no-such-version', str(e))
        self.assertEqual([], os.listdir(self.path('debs')))


class LiveSnapshotTest(GuestTestCase):

    def test_snapshot_holds_every_durable_record(self):
        g = self.guest()
        t0 = time.monotonic()
        g.console.wait_durable(1, BOOT_TIMEOUT)
        first = time.monotonic() - t0
        g.console.wait_durable(30, RECORD_TIMEOUT)
        g.console.wait_for('COMMITTED 20', RECORD_TIMEOUT)
        before = time.time()
        snap = self.driver.snapshot(g.vm)
        durable = g.console.durable_before(before)
        committed = g.console.committed_before(before)
        after = g.console.wait_durable(durable + 20, RECORD_TIMEOUT)
        self.driver.kill(g.vm)
        frozen = snap.disks[0].frozen.path
        self.assertEqual(os.path.abspath(g.disk), frozen)
        check = records.check_recovered(frozen)
        self.note('snapshot', {
            'first_durable_seconds': first,
            'durable_before_snapshot': durable, 'durable_at_kill': after,
            'found': check.records.records, 'replay': check.replay_status,
            'committed_before_snapshot': committed,
            'transactions_found': check.database.transactions})
        self.assertIn(check.replay_status, (0, 1), check.fsck_output)
        self.assertTrue(check.journal_replayed, check.fsck_output)
        self.assertTrue(check.fsck_clean, check.fsck_output)
        # NOTE: a record appended, not yet fsynced, at the snapshot may be
        # torn (records.durable_intact); the durable ones may not.
        self.assertTrue(check.records.durable_intact(durable),
                        check.records.summary())
        self.assertGreaterEqual(check.records.records, durable)
        # NOTE: the guest went on writing into the new overlay: the frozen
        # base cannot hold what it reported after the snapshot and more.
        self.assertLess(check.records.records, after)
        self.assertTrue(check.database.ok, check.database.summary())
        self.assertGreaterEqual(check.database.transactions, committed)
        # The guest's own verify boot agrees with the host's check.
        copy = self.raw_copy(frozen, 'copy.raw')
        self.assertEqual(
            (check.records.summary(), check.database.summary()),
            self.verify_boot(copy, 'verify'))


class VerifyTest(GuestTestCase):

    def test_corrupt_record_is_reported(self):
        g = self.guest(records=40)
        g.console.wait_for(r'GUEST done records=40', RECORD_TIMEOUT)
        g.console.wait_for(r'COMMITTED 40', RECORD_TIMEOUT)
        self.driver.kill(g.vm)
        copy = self.raw_copy(g.disk, 'copy.raw')
        self.assertEqual(('VERIFY ok records=40', 'SQLITE ok transactions=40'),
                         self.verify_boot(copy, 'verify-good'))
        # Record 17: one byte of its pad, in the file's first block.
        fs = self.path('fs.ext4')
        part = records.extract_data_partition(copy, fs)
        out = subprocess.run(['debugfs', '-R', 'bmap %s 0' % records.FILE,
                              fs], check=True, capture_output=True,
                             text=True, timeout=60).stdout
        block = int(out.split()[-1])
        offset = part.offset + block * 4096 + 16 * records.RECORD + 40
        with open(copy, 'r+b') as f:
            f.seek(offset)
            self.assertIn(f.read(1), (b'P', b'A', b'D', b'I', b'N', b'G',
                                      b'-'))
            f.seek(offset)
            f.write(b'#')
        check = records.check_recovered(copy)
        self.assertEqual((39, 1, 17), (check.records.records,
                                       check.records.torn,
                                       check.records.first_bad))
        self.assertFalse(check.records.ok)
        self.assertEqual('VERIFY bad records=39 torn=1 out_of_order=0 '
                         'tail_bytes=0', self.verify_boot(copy,
                                                          'verify-bad')[0])


class BootDiskTest(GuestTestCase):

    def test_seabios_boots_the_disk_and_the_agent_answers(self):
        g = self.guest('bootdisk', kernel_boot=False)
        t0 = time.monotonic()
        g.console.wait_for(r'VERIFY ok records=0', BOOT_TIMEOUT)
        g.console.wait_for(r'SQLITE ok transactions=0', BOOT_TIMEOUT)
        g.console.wait_durable(1, RECORD_TIMEOUT)
        first = time.monotonic() - t0
        g.console.wait_durable(100, RECORD_TIMEOUT)
        (n0, t_first), (n1, t_last) = g.console.durable[0], \
            g.console.durable[-1]
        c = g.console.committed
        self.note('bootdisk', {
            'first_durable_seconds': first,
            'records_per_second': (n1 - n0) / max(t_last - t_first, 1e-6),
            'transactions_per_second': (c[-1][0] - c[0][0]) / max(
                c[-1][1] - c[0][1], 1e-6) if len(c) > 1 else 0})
        self.assertEqual(list(range(1, n1 + 1)),
                         [n for n, _ in g.console.durable])
        self.assertEqual({'return': 4242}, agent_command(
            g.paths.agent, {'execute': 'guest-sync',
                            'arguments': {'id': 4242}}))


class FreezeTest(GuestTestCase):

    def test_snapshot_of_a_frozen_guest_needs_no_replay(self):
        g = self.guest('frozen')
        g.console.wait_durable(20, RECORD_TIMEOUT)
        g.console.wait_for('COMMITTED 5', RECORD_TIMEOUT)
        agent = g.paths.agent
        self.assertEqual({'return': 1}, agent_command(agent, {
            'execute': 'guest-sync', 'arguments': {'id': 1}}))
        before = time.time()
        self.assertEqual({'return': 1}, agent_command(
            agent, {'execute': 'guest-fsfreeze-freeze'}))
        try:
            snap = self.driver.snapshot(g.vm)
        finally:
            self.assertEqual({'return': 1}, agent_command(
                agent, {'execute': 'guest-fsfreeze-thaw'}))
            thawed = time.time()
        self.assertEqual({'return': 'thawed'}, agent_command(
            agent, {'execute': 'guest-fsfreeze-status'}))
        durable = g.console.durable_before(before)
        g.console.wait_durable(durable + 5, RECORD_TIMEOUT)
        self.driver.kill(g.vm)
        check = records.check_recovered(snap.disks[0].frozen.path)
        self.assertFalse(check.journal_replayed, check.fsck_output)
        self.assertEqual(0, check.replay_status, check.fsck_output)
        self.assertTrue(check.fsck_clean, check.fsck_output)
        self.assertTrue(check.records.ok, check.records.summary())
        # NOTE: no record could be written while frozen; one fsync'ed just
        # before the freeze may be reported during it.
        self.assertGreaterEqual(check.records.records, durable)
        self.assertLessEqual(check.records.records,
                             g.console.durable_before(thawed) + 1)
        self.assertTrue(check.database.ok, check.database.summary())


def agent_command(path, command, timeout=30.0):
    """One guest agent command over its socket (qemu-ga's protocol is
    line-delimited JSON; guest-sync makes the first answer unambiguous)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(command).encode() + b'\n')
        buf = b''
        while b'\n' not in buf:
            data = sock.recv(4096)
            if not data:
                raise AssertionError('the guest agent closed its socket')
            buf += data
        return json.loads(buf.split(b'\n', 1)[0])
