"""The e2e's real-guest pieces that need no cloud (realguest.py): the
console read as it grows, the disk facts of the guest image, the copy of
a rebuilt disk's backing file, and the report on a real ext4 made here
(e2fsck and debugfs, as on a recovered disk)."""

import os
import sqlite3
import subprocess
import tempfile
import threading

from ha_snapshot.guest import disk as disk_mod
from ha_snapshot.guest import records
from ha_snapshot.tests import base
from ha_snapshot.tests.integration import cloudlib
from ha_snapshot.tests.integration import realguest

MiB = base.MiB


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


class ConsoleTailTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.file = self.path('console.log')
        self.clock = Clock()
        self.tail = realguest.ConsoleTail(self.file, clock=self.clock)

    def append(self, data: bytes):
        with open(self.file, 'ab') as f:
            f.write(data)

    def test_lines_are_stamped_when_read_whole(self):
        self.tail.read()  # NOTE: no file yet: nothing, no error
        self.append(b'SeaBIOS\r\nDURABLE 1\r\nDUR')
        self.tail.read()
        self.clock.t = 101.0
        self.append(b'ABLE 2\nCOMMITTED 1\n')
        self.tail.read()
        self.assertEqual({1: 100.0, 2: 101.0}, self.tail.durable)
        self.assertEqual({1: 101.0}, self.tail.committed)
        self.assertEqual(0, self.tail.durable_before(100.0))
        self.assertEqual(1, self.tail.durable_before(100.5))
        self.assertEqual(2, self.tail.durable_before(101.5))
        self.assertEqual(0, self.tail.committed_before(101.0))
        self.assertEqual(1, self.tail.committed_before(102.0))
        self.assertEqual(4, self.tail.lines)

    def test_a_replaced_file_is_read_anew_and_first_stamps_kept(self):
        self.append(b'DURABLE 1\nDURABLE 2\nDURABLE 3\n')
        self.tail.read()
        # NOTE: Nova's rebuild removes the instance folder and makes a new
        # console.log: the rebuilt guest numbers on from its restore
        # point, which may repeat numbers the old guest printed.
        new = self.path('console.new')
        with open(new, 'wb') as f:
            f.write(b'VERIFY ok records=2\nDURABLE 3\nDURABLE 4\n')
        os.replace(new, self.file)
        self.clock.t = 200.0
        self.tail.read()
        self.assertEqual({1: 100.0, 2: 100.0, 3: 100.0, 4: 200.0},
                         self.tail.durable)

    def test_a_truncated_file_is_read_anew(self):
        self.append(b'x' * 100 + b'\nDURABLE 1\n')
        self.tail.read()
        with open(self.file, 'wb') as f:
            f.write(b'DURABLE 2\n')
        self.clock.t = 150.0
        self.tail.read()
        self.assertEqual({1: 100.0, 2: 150.0}, self.tail.durable)

    def test_thread_reads_as_the_file_grows(self):
        tail = realguest.ConsoleTail(self.file, poll=0.01).start()
        self.addCleanup(tail.stop)
        self.append(b'DURABLE 1\n')
        self.assertEqual(1, tail.wait_durable(10, 'DURABLE 1'))
        self.append(b'DURABLE 2\n')
        tail.stop()
        self.assertEqual([1, 2], sorted(tail.durable))
        self.assertFalse(any(t.name == 'console-tail' and t.is_alive()
                             for t in threading.enumerate()))

    def test_wait_names_what_it_waited_for(self):
        e = self.assertRaises(cloudlib.ScenarioError, self.tail.wait_durable,
                              0.1, 'the guest of server A')
        self.assertIn('the guest of server A', str(e))


def guest_disk(path: str, workdir: str, boot_mib: int = 40,
               data_mib: int = 16) -> str:
    """A bootable disk as the guest build makes it (stand-in kernel and
    initramfs files)."""
    kernel, initrd = os.path.join(workdir, 'k'), os.path.join(workdir, 'i')
    for p in (kernel, initrd):
        with open(p, 'wb') as f:
            f.write(os.urandom(64 * 1024))
    disk_mod.make_disk(path, workdir, kernel, initrd, 'console=ttyS0',
                       boot_mib, data_mib)
    return path


class GuestImageTest(base.TestCase):

    def test_disk_facts_and_boot_partition(self):
        disk = guest_disk(self.path('g.qcow2'), self.path())
        image = realguest.GuestImage(disk, self.path())
        self.assertEqual((1 + 40 + 16) * MiB, image.end)
        self.assertEqual(41 * MiB, image.boot_end)
        # NOTE: the stand-in kernel and initramfs are 128 KiB of random
        # data; the rest is file system metadata.
        self.assertGreater(image.data_bytes, 128 * 1024)
        self.assertLess(image.data_bytes, 8 * MiB)
        copy = self.path('copy.raw')
        subprocess.run(['qemu-img', 'convert', '-O', 'raw', disk, copy],
                       check=True)
        subprocess.run(['qemu-img', 'resize', '-f', 'raw', copy, '1G'],
                       check=True, capture_output=True)
        base.qemu_io(copy, 'write -P 0x55 %d 1M' % realguest.FREE_OFFSET,
                     'write -P 0x66 %d 4k' % (50 * MiB), fmt='raw')
        self.assertTrue(image.holds_boot_partition(copy))
        base.qemu_io(copy, 'write -P 0x77 %d 512' % (2 * MiB), fmt='raw')
        self.assertFalse(image.holds_boot_partition(copy))

    def test_partitions_past_the_scenarios_writes_are_refused(self):
        raw = self.path('big.raw')
        with open(raw, 'wb') as f:
            f.truncate(256 * MiB)
        disk_mod.write_mbr(raw, [
            (disk_mod.FAT16, MiB, 8 * MiB, True),
            (disk_mod.LINUX, 9 * MiB, 240 * MiB, False)])
        e = self.assertRaises(cloudlib.ScenarioError, realguest.GuestImage,
                              raw, self.path())
        self.assertIn('past the offset the scenario writes to', str(e))


class FakeDomain:
    def __init__(self, disk):
        self.disk = disk

    def nsenter(self):
        return []

    def disk_path(self):
        return self.disk


class RestorePointCopyTest(base.TestCase):

    def test_the_backing_file_is_copied_not_the_guests_writes(self):
        base_img = self.path('_base')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'raw', base_img,
                        '64M'], check=True)
        base.qemu_io(base_img, 'write -P 0x21 1M 1M', fmt='raw')
        disk = base.new_overlay(self.path('disk'), base_img, 'raw')
        base.qemu_io(disk, 'write -P 0x99 1M 64k')
        copy = realguest.restore_point_copy(FakeDomain(disk), self.path())
        self.assertTrue(cloudlib.holds_pattern(copy, 0x21, MiB, MiB, 'raw'))

    def test_a_disk_without_backing_is_named(self):
        disk = self.path('flat')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', disk,
                        '1M'], check=True)
        e = self.assertRaises(cloudlib.ScenarioError,
                              realguest.restore_point_copy,
                              FakeDomain(disk), self.path())
        self.assertIn(disk, str(e))


def recovered_disk(path: str, workdir: str, data: bytes,
                   transactions: int) -> str:
    """A raw disk with an MBR and an ext4 data partition holding the
    records file ``data`` and a database of ``transactions``, as the
    guest leaves them (files put in place with debugfs, no mount)."""
    workdir = tempfile.mkdtemp(dir=workdir)
    fs = os.path.join(workdir, 'data.ext4')
    subprocess.run(['mkfs.ext4', '-q', '-F', '-b', '4096', fs, '16M'],
                   check=True)
    rec = os.path.join(workdir, 'records')
    with open(rec, 'wb') as f:
        f.write(data)
    db = os.path.join(workdir, 'app.db')
    con = sqlite3.connect(db)
    con.executescript(
        'CREATE TABLE tx(id INTEGER PRIMARY KEY, t INTEGER NOT NULL, '
        'body TEXT NOT NULL); CREATE TABLE totals(k INTEGER PRIMARY KEY, '
        'n INTEGER NOT NULL, total INTEGER NOT NULL);')
    for c in range(1, transactions + 1):
        con.execute('INSERT INTO tx VALUES (?, 0, ?)', (c, 'tx %d' % c))
    con.execute('INSERT INTO totals VALUES (1, ?, ?)',
                (transactions, sum(range(1, transactions + 1))))
    con.commit()
    con.close()
    for src, dest in ((rec, records.FILE), (db, records.DATABASE)):
        subprocess.run(['debugfs', '-w', '-R', 'write %s %s' % (src, dest),
                        fs], check=True, capture_output=True)
    with open(path, 'wb') as f:
        f.truncate(MiB + 16 * MiB)
    disk_mod.write_mbr(path, [(disk_mod.LINUX, MiB, 16 * MiB, False)])
    with open(fs, 'rb') as fin, open(path, 'r+b') as fout:
        fout.seek(MiB)
        fout.write(fin.read())
    return path


def recs(count):
    return b''.join(records.make_record(n, 500 + 9 * n)
                    for n in range(1, count + 1))


class ReportTest(base.TestCase):

    def check(self, data: bytes, transactions: int = 3):
        disk = recovered_disk(self.path('rp.raw'), self.path(), data,
                              transactions)
        return records.check_recovered(disk, self.path())

    def test_nothing_lost(self):
        out = realguest.report(self.check(recs(5)), 4, 3, 6,
                               'VERIFY ok records=5')
        self.assertTrue(out['guest_verified'])
        self.assertTrue(out['guest_booted'])
        self.assertTrue(out['fsck_clean'])
        self.assertEqual((4, 5, 0, 0), (
            out['records_durable_before_restore_point'],
            out['records_in_restore_point'], out['records_lost'],
            out['records_torn']))
        self.assertEqual((3, 3, 0, True), (
            out['transactions_committed_before_restore_point'],
            out['transactions_in_restore_point'],
            out['transactions_lost'], out['database_ok']))

    def test_records_reported_durable_but_missing_are_lost(self):
        out = realguest.report(self.check(recs(5)), 7, 3, 6, None)
        self.assertEqual(2, out['records_lost'])
        self.assertFalse(out['guest_verified'])

    def test_a_torn_record_after_the_durable_ones_is_allowed(self):
        data = recs(4) + bytes(records.RECORD)
        out = realguest.report(self.check(data), 4, 3, 6, None)
        self.assertEqual((0, 1, 0), (out['records_torn'],
                                     out['records_torn_after_durable'],
                                     out['records_lost']))
        self.assertTrue(out['guest_verified'])
        # NOTE: ...but not among them.
        out = realguest.report(self.check(data), 5, 3, 6, None)
        self.assertEqual((1, 1), (out['records_torn'], out['records_lost']))
        self.assertFalse(out['guest_verified'])

    def test_lost_transactions_and_a_guest_that_did_not_boot(self):
        out = realguest.report(self.check(recs(2), transactions=1), 2, 3,
                               None, None)
        self.assertEqual(2, out['transactions_lost'])
        self.assertFalse(out['guest_booted'])
        self.assertFalse(out['guest_verified'])

    def test_the_rebuilt_guest_must_go_on_from_the_restore_point(self):
        # NOTE: a guest that numbers from elsewhere did not boot from it.
        out = realguest.report(self.check(recs(5)), 4, 3, 2, None)
        self.assertFalse(out['guest_verified'])

    def test_no_durable_record_proves_nothing(self):
        out = realguest.report(self.check(recs(5)), 0, 3, 6, None)
        self.assertFalse(out['guest_verified'])
