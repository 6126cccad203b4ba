"""The manager's spool: parts held in memory, pushed out to disk."""

import hashlib
import json
import os
import threading

from ha_snapshot import delta as delta_mod
from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.manager import spool as spool_mod
from ha_snapshot.tests import base

MiB = base.MiB


class SpoolTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.inst = base.new_uuid()
        disk = self.make_qcow2('disk.qcow2', 8 * MiB, 'write -P 0x11 0 1M',
                               'write -P 0x22 1M 1M', 'write -P 0x33 2M 1M')
        info = image_inspect.inspect(disk, 'qcow2', max_virtual_size=1 << 40)
        d = delta_mod.from_image(info, instance=self.inst, project='p',
                                 sequence=4, parent=None, max_part_bytes=MiB,
                                 max_part_extents=64)
        self.prim = json.loads(json.dumps(d.to_primitive()))
        self.header = delta_mod.header_from_primitive(self.prim['header'])
        self.assertEqual(3, self.header.part_count)
        self.root = self.path('spool')

    def spool(self, memory_bytes):
        return spool_mod.Spool(self.root, MiB, memory_bytes=memory_bytes)

    def files(self):
        return sorted(n for _d, _s, names in os.walk(self.root)
                      for n in names)

    def put_all(self, spool):
        for part in self.prim['parts']:
            spool.put(self.inst, 4, part)

    def assert_loads_whole(self, spool):
        """Every part comes back with the bytes its checksum names."""
        loaded = spool.load(self.header)
        got = []
        for part in loaded.parts():
            raw = part.decoded if part.decoded is not None else (
                part.decode(self.header))
            self.assertEqual(part.sha256, hashlib.sha256(raw).hexdigest())
            got.append(raw[:1])
        self.assertEqual([b'\x11', b'\x22', b'\x33'], got)

    def test_parts_that_fit_are_never_written(self):
        spool = self.spool(4 * MiB)
        self.put_all(spool)
        self.assertEqual([], self.files())
        self.assertEqual(3 * MiB, spool.held_bytes)
        self.assert_loads_whole(spool)
        spool.drop_through(self.inst, 4)
        self.assertEqual(0, spool.held_bytes)
        self.assertRaisesRegex(exception.InvalidDelta, 'part 0 of 3 was '
                               'never received', spool.load, self.header)

    def test_oldest_parts_are_pushed_out_to_disk(self):
        spool = self.spool(MiB + MiB // 2)
        self.put_all(spool)
        self.assertEqual(['000000.part', '000001.part'], self.files())
        self.assertEqual(MiB, spool.held_bytes)
        self.assert_loads_whole(spool)
        # NOTE: kept decoded: read back, nothing is decompressed.
        with open(os.path.join(self.root, self.inst, '%012d' % 4,
                               '000000.part'), 'rb') as f:
            self.assertIn(b'"compression": "none"', f.read(4096))
        spool.drop(self.inst, 4)
        self.assertEqual([], self.files())
        self.assertEqual(0, spool.held_bytes)

    def test_restart_loses_held_parts_and_says_send_again(self):
        first = self.spool(MiB + MiB // 2)
        self.put_all(first)
        restarted = self.spool(MiB + MiB // 2)
        e = self.assertRaises(exception.InvalidDelta, restarted.load,
                              self.header)
        self.assertIn('part 2 of 3 was never received (or was lost with a '
                      'restart of the manager); send it again', str(e))
        restarted.put(self.inst, 4, self.prim['parts'][2])
        self.assert_loads_whole(restarted)

    def test_memory_zero_writes_every_part(self):
        spool = self.spool(0)
        self.put_all(spool)
        self.assertEqual(['000000.part', '000001.part', '000002.part'],
                         self.files())
        self.assertEqual(0, spool.held_bytes)
        self.assert_loads_whole(self.spool(0))

    def test_part_sent_again_replaces_the_one_held(self):
        spool = self.spool(4 * MiB)
        self.put_all(spool)
        bad = dict(self.prim['parts'][1], sha256='0' * 64)
        self.assertRaises(exception.InvalidDelta, spool.put, self.inst, 4,
                          bad)
        spool.put(self.inst, 4, self.prim['parts'][1])
        self.assertEqual(3 * MiB, spool.held_bytes)
        self.assert_loads_whole(spool)

    def test_drop_while_a_part_is_written_leaves_no_file(self):
        """A commit (or unprotect) drops the delta while one of its parts
        is being pushed out to disk: the file must not outlive it."""
        spool = self.spool(MiB + MiB // 2)
        writing, release = threading.Event(), threading.Event()
        real_write = spool._write

        def slow_write(key, meta, raw):
            writing.set()
            release.wait(10)
            real_write(key, meta, raw)
        spool._write = slow_write
        spool.put(self.inst, 4, self.prim['parts'][0])
        # NOTE: part 1 pushes part 0 out, in the thread that brought it.
        pusher = threading.Thread(target=spool.put, args=(
            self.inst, 4, self.prim['parts'][1]))
        pusher.start()
        self.assertTrue(writing.wait(10), 'part 0 being pushed out')
        spool.drop_through(self.inst, 4)
        release.set()
        pusher.join(10)
        self.assertFalse(pusher.is_alive())
        self.assertEqual([], self.files())
        self.assertEqual(0, spool.held_bytes)

    def test_unwritable_spool_dir_reports_the_part_lost(self):
        spool = self.spool(MiB + MiB // 2)
        # NOTE: a file where the directory was (mode bits do not stop
        # root).
        os.rmdir(self.root)
        with open(self.root, 'w'):
            pass
        with self.assertLogs('ha_snapshot.manager.spool', 'WARNING') as logs:
            self.put_all(spool)
        self.assertIn('could not be written', logs.output[0])
        e = self.assertRaises(exception.InvalidDelta, spool.load,
                              self.header)
        self.assertIn('part 0 of 3 was never received', str(e))
        self.assertIn('send it again', str(e))
