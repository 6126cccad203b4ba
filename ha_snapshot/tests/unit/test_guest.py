"""The test guest's pieces that need no QEMU: the record check (against
the guest's own verify, run by a real busybox sh), the initramfs archive
(read back by a real cpio reader), the ELF reader, the MBR, the console
reader over a real unix socket, and shellcheck on /init."""

import gzip
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading

from ha_snapshot import exception
from ha_snapshot.guest import build
from ha_snapshot.guest import console as console_mod
from ha_snapshot.guest import disk as disk_mod
from ha_snapshot.guest import initramfs
from ha_snapshot.guest import packages
from ha_snapshot.guest import records
from ha_snapshot.tests import base


def recs(count, start=1):
    return b''.join(records.make_record(n, 1000 + 7 * n)
                    for n in range(start, start + count))


def guest_verify(path, args=''):
    """init.sh's verify() run by busybox sh on ``path`` (the line the
    guest prints); ``args``: verify's (another file, another tag)."""
    busybox = shutil.which('busybox')
    if busybox is None:
        raise AssertionError('busybox not found: install busybox-static')
    with open(build.INIT) as f:
        init = f.read()
    pad = [line for line in init.splitlines() if line.startswith('PAD=')][0]
    body = init[init.index('verify() {'):]
    body = body[:body.index('\n}\n') + 3]
    script = 'RECORD=%d\n%s\nF=%s\n%sverify %s\n' % (
        records.RECORD, pad, path, body, args)
    return subprocess.run([busybox, 'sh', '-c', script], check=True,
                          capture_output=True, text=True,
                          timeout=60).stdout.strip()


def guest_db(path, function):
    """init.sh's database set-up and ``function`` (verify_db,
    db_workload) run by busybox sh with the host's sqlite3 on ``path``."""
    busybox = shutil.which('busybox')
    if busybox is None or shutil.which('sqlite3') is None:
        raise AssertionError('busybox or sqlite3 not found: install '
                             'busybox-static and sqlite3')
    with open(build.INIT) as f:
        init = f.read()
    body = init[init.index('DB=/data/app.db'):init.index('\nverify\n')]
    script = ('fail() { echo "GUEST error $*"; exit 1; }\nLIMIT=5\n%s\n'
              'DB=%s\nsqlite3 -batch $DB "$SQL_INIT" > /dev/null\n%s\n'
              % (body, path, function))
    return subprocess.run([busybox, 'sh', '-c', script], check=True,
                          capture_output=True, text=True,
                          timeout=60).stdout.strip()


class DatabaseCheckTest(base.TestCase):

    def test_workload_then_checks_agree(self):
        db = self.path('app.db')
        self.assertEqual('\n'.join('COMMITTED %d' % n for n in range(1, 6)),
                         guest_db(db, 'db_workload'))
        self.assertEqual('SQLITE ok transactions=5',
                         guest_db(db, 'verify_db'))
        check = records.check_database(db)
        self.assertEqual('SQLITE ok transactions=5', check.summary())

    def test_half_transaction_is_found(self):
        db = self.path('app.db')
        guest_db(db, 'db_workload')
        con = sqlite3.connect(db)
        con.execute("INSERT INTO tx VALUES (6, 0, 'no totals')")
        con.commit()
        con.close()
        self.assertFalse(records.check_database(db).ok)
        self.assertTrue(guest_db(db, 'verify_db').startswith('SQLITE bad'))

    def test_missing_row_is_found(self):
        db = self.path('app.db')
        guest_db(db, 'db_workload')
        con = sqlite3.connect(db)
        con.execute('DELETE FROM tx WHERE id = 3')
        con.execute('UPDATE totals SET n = n - 1, total = total - 3')
        con.commit()
        con.close()
        self.assertFalse(records.check_database(db).consistent)
        self.assertTrue(guest_db(db, 'verify_db').startswith('SQLITE bad'))

    def test_set_up_not_yet_committed(self):
        # A crash-consistent copy taken during the guest's set-up: the WAL
        # file header, no table. No transaction, nothing inconsistent;
        # the guest's next boot sets it up and goes on.
        db = self.path('app.db')
        con = sqlite3.connect(db)
        con.execute('PRAGMA journal_mode=WAL')
        con.close()
        self.assertEqual('SQLITE ok transactions=0',
                         records.check_database(db).summary())
        self.assertEqual('SQLITE ok transactions=0',
                         guest_db(db, 'verify_db'))
        # Half a schema (the set-up was not one transaction before) is
        # not that: it is reported.
        half = self.path('half.db')
        con = sqlite3.connect(half)
        con.execute('CREATE TABLE tx(id INTEGER PRIMARY KEY)')
        con.commit()
        con.close()
        self.assertFalse(records.check_database(half).ok)

    def test_not_a_database(self):
        db = self.path('app.db')
        with open(db, 'wb') as f:
            f.write(b'garbage' * 1000)
        check = records.check_database(db)
        self.assertFalse(check.ok)
        self.assertIn('error', check.integrity)
        self.assertTrue(guest_db(self.path('other.db'), 'verify_db')
                        .startswith('SQLITE ok'))


class RecordCheckTest(base.TestCase):

    def check_both(self, data, expected):
        path = self.path('records')
        with open(path, 'wb') as f:
            f.write(data)
        check = records.check_records(data)
        self.assertEqual(expected, check.summary())
        self.assertEqual(expected, guest_verify(path))
        return check

    def test_good(self):
        check = self.check_both(recs(300), 'VERIFY ok records=300')
        self.assertTrue(check.ok)
        self.assertEqual(300, check.contiguous)
        self.assertEqual(1007, check.uptimes[0])
        self.assertEqual(128, len(records.make_record(99999999, 10 ** 11)))

    def test_empty(self):
        self.check_both(b'', 'VERIFY ok records=0')

    def test_second_disk_is_tagged(self):
        """The second data disk's records, checked by the same verify()
        under its own tag."""
        first, second = self.path('records'), self.path('records2')
        with open(first, 'wb') as f:
            f.write(recs(3))
        with open(second, 'wb') as f:
            f.write(recs(5) + b'R 0')
        self.assertEqual('VERIFY2 bad records=5 torn=0 out_of_order=0 '
                         'tail_bytes=3',
                         guest_verify(first, '%s VERIFY2' % second))
        self.assertEqual('VERIFY ok records=3', guest_verify(first))

    def test_corrupt_byte_is_torn(self):
        data = bytearray(recs(50))
        data[20 * 128 + 60] ^= 0x20
        check = self.check_both(bytes(data), 'VERIFY bad records=49 torn=1 '
                                'out_of_order=0 tail_bytes=0')
        self.assertEqual(21, check.first_bad)
        self.assertEqual(20, check.contiguous)

    def test_a_torn_record_after_the_durable_ones_is_crash_consistent(self):
        # Record 31 appended, not fsynced, when the point was taken: its
        # slot is zeros (ext4 committed the new size before the bytes).
        data = recs(30) + bytes(128)
        check = self.check_both(data, 'VERIFY bad records=30 torn=1 '
                                'out_of_order=0 tail_bytes=0')
        self.assertTrue(check.durable_intact(30))
        self.assertEqual(31, check.whole)
        # The same record among the durable ones is a loss.
        self.assertFalse(check.durable_intact(31))
        data = bytearray(recs(30))
        data[10 * 128 + 40] ^= 0x20
        self.assertFalse(records.check_records(bytes(data))
                         .durable_intact(30))

    def test_missing_judges_record_numbers(self):
        # After several recoveries: record 31 was torn at a crash (not yet
        # fsynced), the guest went on after it with 32..40.
        data = recs(30) + bytes(128) + recs(9, start=32)
        check = records.check_records(data)
        self.assertEqual((39, (31,)), (check.records, check.bad))
        self.assertEqual([], check.missing(list(range(1, 31))
                                           + list(range(32, 41))))
        self.assertEqual([31, 41], check.missing([5, 31, 40, 41]))
        self.assertFalse(check.durable_intact(40))

    def test_changed_number_fails_the_check_value(self):
        data = bytearray(recs(20))
        data[5 * 128 + 9] = ord('7')
        self.check_both(bytes(data), 'VERIFY bad records=19 torn=1 '
                        'out_of_order=0 tail_bytes=0')

    def test_zeroed_block_is_torn(self):
        data = recs(40)
        data = data[:1024] + bytes(1024) + data[2048:]
        self.check_both(data, 'VERIFY bad records=32 torn=8 '
                        'out_of_order=0 tail_bytes=0')

    def test_swapped_records_are_out_of_order(self):
        r = recs(10)
        data = r[:512] + r[640:768] + r[512:640] + r[768:]
        self.check_both(data, 'VERIFY bad records=8 torn=0 out_of_order=2 '
                        'tail_bytes=0')

    def test_partial_tail(self):
        data = recs(10) + records.make_record(11, 5)[:77]
        check = self.check_both(data, 'VERIFY bad records=10 torn=0 '
                                'out_of_order=0 tail_bytes=77')
        self.assertEqual(11, check.first_bad)
        self.assertEqual(10, check.contiguous)

    def test_guest_and_host_agree_on_damage(self):
        # Zeroed ranges, stray newlines, lost and inserted bytes, cut
        # ends: the guest's awk (lines) and records.py (slots) must agree.
        rng = random.Random(13)
        good = recs(64)
        path = self.path('fuzz')
        for case in range(60):
            data = bytearray(good)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(len(data))
                kind = rng.choice(('zero', 'newline', 'delete', 'insert',
                                   'byte'))
                if kind == 'zero':
                    n = rng.choice((1, 100, 128, 512, 700))
                    data[at:at + n] = bytes(len(data[at:at + n]))
                elif kind == 'newline':
                    data[at] = 0x0A
                elif kind == 'delete':
                    del data[at:at + rng.randint(1, 200)]
                elif kind == 'insert':
                    data[at:at] = b'x\n' * rng.randint(1, 3)
                else:
                    data[at] = rng.randrange(32, 127)
            if rng.random() < 0.3:
                del data[rng.randrange(len(data)):]
            with open(path, 'wb') as f:
                f.write(data)
            self.assertEqual(records.check_records(bytes(data)).summary(),
                             guest_verify(path), 'case %d' % case)

    def test_large_numbers(self):
        # NOTE: busybox awk's octal reading and 32-bit %d are avoided.
        data = recs(3, start=99999990)
        check = records.check_records(data)
        self.assertEqual(3, check.out_of_order)
        self.assertEqual(0, check.torn)
        path = self.path('r')
        with open(path, 'wb') as f:
            f.write(data)
        self.assertEqual(check.summary(), guest_verify(path))


def read_newc(path):
    """{name: (mode, data, rdevmajor, rdevminor)} of a gzip'ed newc cpio."""
    with gzip.open(path, 'rb') as f:
        data = f.read()
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b'070701', data[pos:pos + 6]
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16)
                  for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_at = pos + 110
        name = data[name_at:name_at + namesize - 1].decode()
        body_at = name_at + namesize + (-(110 + namesize) % 4)
        body = data[body_at:body_at + filesize]
        pos = body_at + filesize + (-filesize % 4)
        if name == 'TRAILER!!!':
            return out
        out[name] = (fields[1], body, fields[9], fields[10])


class InitramfsTest(base.TestCase):

    def test_archive_reads_back(self):
        arc = initramfs.Archive()
        arc.file('init', b'#!/bin/sh\necho hi\n', 0o755)
        arc.file('a/b/c.txt', b'x' * 5)
        arc.symlink('bin/sh', '/bin/busybox')
        arc.char_device('dev/console', 5, 1)
        size = arc.write(self.path('i.img'))
        self.assertEqual(os.path.getsize(self.path('i.img')), size)
        got = read_newc(self.path('i.img'))
        self.assertEqual({'init', 'a', 'a/b', 'a/b/c.txt', 'bin', 'bin/sh',
                          'dev', 'dev/console'}, set(got))
        self.assertEqual((0o100755, b'#!/bin/sh\necho hi\n'),
                         got['init'][:2])
        self.assertEqual(0o120777, got['bin/sh'][0])
        self.assertEqual(b'/bin/busybox', got['bin/sh'][1])
        self.assertEqual((0o20600, b'', 5, 1), got['dev/console'])
        self.assertEqual(0o40755, got['a/b'][0])
        # Same inputs, same bytes.
        arc.write(self.path('j.img'))
        with open(self.path('i.img'), 'rb') as a, \
                open(self.path('j.img'), 'rb') as b:
            self.assertEqual(a.read(), b.read())

    def test_elf_needed(self):
        needed = initramfs.elf_needed(os.path.realpath(sys.executable))
        self.assertIn('libc.so.6', needed)

    def test_elf_refuses_other_files(self):
        self.assertRaises(exception.GuestImageError, initramfs.elf_needed,
                          build.INIT)

    def test_missing_library_is_named(self):
        root = self.path('root')
        os.makedirs(root)
        e = self.assertRaises(
            exception.GuestImageError, initramfs.needed_libraries,
            os.path.realpath(sys.executable), [root])
        self.assertIn('libc.so.6', str(e))


class MbrTest(base.TestCase):

    def test_write_and_read(self):
        path = self.path('d.raw')
        with open(path, 'wb') as f:
            f.truncate(105 * base.MiB)
        disk_mod.write_mbr(path, [
            (disk_mod.FAT16, base.MiB, 40 * base.MiB, True),
            (disk_mod.LINUX, 41 * base.MiB, 64 * base.MiB, False)])
        self.assertEqual([
            disk_mod.Partition(1, 0x06, base.MiB, 40 * base.MiB, True),
            disk_mod.Partition(2, 0x83, 41 * base.MiB, 64 * base.MiB,
                               False)], disk_mod.partitions(path))
        # sfdisk (util-linux) reads the same table.
        if shutil.which('sfdisk'):
            out = subprocess.run(['sfdisk', '-d', path], check=True,
                                 capture_output=True, text=True).stdout
            self.assertIn('start=        2048, size=       81920, '
                          'type=6, bootable', out)
            self.assertIn('start=       83968, size=      131072, type=83',
                          out)

    def test_no_table(self):
        path = self.path('z.raw')
        with open(path, 'wb') as f:
            f.truncate(4096)
        self.assertRaises(exception.GuestImageError, disk_mod.partitions,
                          path)


class ConsoleTest(base.TestCase):

    def test_lines_are_stamped_and_durable_parsed(self):
        path = self.path('c.sock')
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        self.addCleanup(server.close)
        con = console_mod.Console(path, 'g')
        con.connect(5)
        self.addCleanup(con.close)
        peer, _ = server.accept()
        peer.sendall(b'boot\r\nDURABLE 1\nDUR')
        self.assertEqual(1, con.wait_durable(1, 5))
        peer.sendall(b'ABLE 2\n[ 3.1] kernel DURABLE 3\n')
        self.assertEqual(3, con.wait_durable(3, 5))
        self.assertEqual([1, 2, 3], [n for n, _ in con.durable])
        # The second data disk's records are counted apart.
        peer.sendall(b'DURABLE2 1\nDURABLE 4\nDURABLE2 2\n')
        self.assertEqual(2, con.wait_durable(2, 5, disk=2))
        self.assertEqual(4, con.wait_durable(4, 5))
        self.assertEqual([1, 2, 3, 4], [n for n, _ in con.durable])
        self.assertEqual([1, 2], [n for n, _ in con.durable2])
        self.assertEqual(1, con.durable_before(con.durable2[1][1], disk=2))
        self.assertEqual(0, con.durable_before(con.durable2[0][1], disk=2))
        self.assertEqual([], [n for n, _ in con.committed])
        self.assertEqual('boot', con.lines[0].text)
        t2 = con.durable[1][1]
        self.assertEqual(1, con.durable_before(t2))
        self.assertEqual(4, con.durable_before(t2 + 60))
        e = self.assertRaises(exception.GuestConsoleTimeout, con.wait_for,
                              'VERIFY', 0.1)
        self.assertIn('within 0.1 s', str(e))
        self.assertIn('DURABLE2 2', str(e))
        closed = threading.Event()
        peer.close()
        con._reader.join(5)
        closed.set()
        e = self.assertRaises(exception.GuestConsoleTimeout,
                              con.wait_durable, 5, 30)
        self.assertIn('before the console closed', str(e))
        e = self.assertRaises(exception.GuestConsoleTimeout,
                              con.wait_durable, 3, 30, disk=2)
        self.assertIn('DURABLE2 3', str(e))

    def test_file_console_follows_a_growing_file(self):
        path = self.path('serial.log')
        with open(path, 'wb') as f:
            f.write(b'DURABLE 7\nan earlier run\n')
        offset = os.path.getsize(path)
        alive = threading.Event()
        alive.set()
        con = console_mod.FileConsole(path, 'g', offset,
                                      alive=alive.is_set)
        con.connect()
        self.addCleanup(con.close)
        with open(path, 'ab') as f:
            f.write(b'VERIFY ok records=6\r\nDURABLE 7\nDURA')
            f.flush()
            self.assertEqual(7, con.wait_durable(7, 5))
            f.write(b'BLE 8\n')
            f.flush()
            self.assertEqual(8, con.wait_durable(8, 5))
            f.write(b'DURABLE 9')
        self.assertEqual(['VERIFY ok records=6', 'DURABLE 7', 'DURABLE 8'],
                         [line.text for line in con.lines])
        # The VM gone: what it wrote last is read, then the console ends.
        alive.clear()
        e = self.assertRaises(exception.GuestConsoleTimeout,
                              con.wait_durable, 10, 30)
        self.assertIn('before the console closed', str(e))
        self.assertEqual([7, 8, 9], [n for n, _ in con.durable])

    def test_file_console_waits_for_the_file(self):
        path = self.path('later.log')
        con = console_mod.FileConsole(path, 'g')
        con.connect()
        self.addCleanup(con.close)
        e = self.assertRaises(exception.GuestConsoleTimeout, con.wait_for,
                              'GUEST up', 0.1)
        self.assertIn('within 0.1 s', str(e))
        with open(path, 'wb') as f:
            f.write(b'GUEST up records=3\n')
        self.assertEqual('3', con.wait_for(r'GUEST up records=(\d+)', 5)[1]
                         .group(1))

    def test_nothing_to_connect_to(self):
        con = console_mod.Console(self.path('none.sock'), 'g')
        e = self.assertRaises(exception.GuestConsoleTimeout, con.connect,
                              0.1)
        self.assertIn('none.sock', str(e))


class InitScriptTest(base.TestCase):

    def test_shellcheck(self):
        shellcheck = shutil.which('shellcheck')
        self.assertIsNotNone(shellcheck, 'shellcheck is not installed; '
                             'bindep.txt lists it')
        r = subprocess.run([shellcheck, build.INIT], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(0, r.returncode, r.stdout)

    def test_cmdline(self):
        image = build.GuestImage('d', 'k', 'i', 'x', 'key', {}, True, 0.0)
        self.assertEqual('console=ttyS0 quiet panic=-1 no_timer_check '
                         'ha.mode=verify',
                         image.cmdline('verify'))
        self.assertTrue(image.cmdline(records=5).endswith(
            'ha.mode=workload ha.records=5'))


class PackagesTest(base.TestCase):

    def test_kernel_of_a_meta_package(self):
        meta = packages.Package(
            'linux-image-cloud-amd64', '6.1.176-1', 'amd64',
            'linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)')
        self.assertEqual('linux-image-6.1.0-50-cloud-amd64',
                         packages.depends_on(meta, 'linux-image-'))
        e = self.assertRaises(exception.GuestImageError, packages.depends_on,
                              packages.Package('x', '1', 'all'),
                              'linux-image-')
        self.assertIn('depends on no linux-image-* package', str(e))

    def test_file_name_is_apts(self):
        self.assertEqual(
            'busybox-static_1%3a1.35.0-4_amd64.deb',
            packages.Package('busybox-static', '1:1.35.0-4',
                             'amd64').file_name)

    def test_bad_names_refused_before_apt(self):
        e = self.assertRaises(exception.GuestPackageNotFound,
                              packages.candidates, ['ok-name', 'Bad Name;'])
        self.assertIn("Bad Name;", str(e))
        self.assertIn('not a Debian package name', str(e))

    def test_unusable_cache_directory_is_named(self):
        path = self.path('file')
        with open(path, 'w'):
            pass
        e = self.assertRaises(exception.GuestImageError, build.build,
                              os.path.join(path, 'cache'))
        self.assertIn('cannot use the cache directory %s/cache' % path,
                      str(e))

    def test_apt_state_is_stable(self):
        self.assertEqual(packages.apt_state(), packages.apt_state())
