"""The manager's spool: parts held in memory, pushed out to disk."""

import hashlib
import json
import os
import threading
import time
import tracemalloc

from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
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
        d = delta_images.from_image(info, instance=self.inst, project='p',
                                    sequence=4, parent=None,
                                    max_part_bytes=MiB,
                                    max_part_extents=64)
        self.prim = json.loads(json.dumps(d.to_primitive()))
        self.header = delta_mod.header_from_primitive(self.prim['header'])
        self.assertEqual(3, self.header.part_count)
        self.root = self.path('spool')

    def spool(self, memory_bytes):
        return spool_mod.Spool(self.root, MiB, memory_bytes=memory_bytes)

    def assert_held(self, spool, nbytes, parts):
        """What ``parts`` held parts of ``nbytes`` bytes in all cost: their
        bytes, and a little for their extents and bookkeeping."""
        self.assertGreaterEqual(spool.held_bytes, nbytes + parts * (
            spool_mod.PART_OVERHEAD))
        self.assertLess(spool.held_bytes, nbytes + parts * 8 * 1024)

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
        self.assert_held(spool, 3 * MiB, 3)
        self.assert_loads_whole(spool)
        spool.drop_through(self.inst, 4)
        self.assertEqual(0, spool.held_bytes)
        self.assertRaisesRegex(exception.InvalidDelta, 'part 0 of 3 was '
                               'never received', spool.load, self.header)

    def test_oldest_parts_are_pushed_out_to_disk(self):
        spool = self.spool(MiB + MiB // 2)
        self.put_all(spool)
        self.assertEqual(['000000.part', '000001.part'], self.files())
        self.assert_held(spool, MiB, 1)
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
        self.assert_held(spool, 3 * MiB, 3)
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


def zero_part(instance, sequence, index, extents=4096):
    """A part of zero extents only: no bytes, ``extents`` extents."""
    return {'instance': instance, 'sequence': sequence, 'index': index,
            'extents': [[(index * extents + k) * 2 * 65536, 65536, 'zero']
                        for k in range(extents)],
            'raw_size': 0, 'sha256': hashlib.sha256(b'').hexdigest(),
            'compression': 'none', 'payload': ''}


class SpoolLimitsTestCase(base.TestCase):
    """What held parts cost, the caps, and the sweep of abandoned deltas."""

    def setUp(self):
        super().setUp()
        self.inst = base.new_uuid()
        self.root = self.path('spool')
        self.now = 1000.0

    def spool(self, memory_bytes=4 * MiB, **kw):
        return spool_mod.Spool(self.root, MiB, memory_bytes=memory_bytes,
                               clock=lambda: self.now, **kw)

    def files(self):
        return sorted(os.path.relpath(os.path.join(d, n), self.root)
                      for d, _s, names in os.walk(self.root) for n in names)

    def test_zero_only_parts_count_against_memory(self):
        """Parts of zero extents only have no bytes, but their extents
        cost memory: they are counted and pushed out to disk like any
        part (before: 60 such parts held about 25 MB, counted as 0)."""
        spool = spool_mod.Spool(self.root, MiB, memory_bytes=MiB)
        parts = [json.loads(json.dumps(zero_part(
            self.inst, i // 15, i % 15, 2048))) for i in range(60)]
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        for part in parts:
            spool.put(self.inst, part['sequence'], part)
        grown = tracemalloc.get_traced_memory()[0] - before
        self.assertLessEqual(spool.held_bytes, MiB)
        self.assertGreater(spool.held_bytes, MiB // 2)
        # NOTE: what is counted is what is held (within 10 %).
        self.assertLess(grown, MiB * 1.1, grown)
        self.assertGreater(len(self.files()), 40)
        # Both kinds come back whole for the merge.
        header = delta_mod.DeltaHeader(
            instance=self.inst, project='p', sequence=3, parent=None,
            virtual_size=1 << 40, cluster_size=65536, part_count=15,
            changed_bytes=15 * 2048 * 65536, data_bytes=0)
        loaded = spool.load(header)
        loaded.validate(max_virtual_size=1 << 40, max_part_bytes=MiB,
                        max_part_extents=4096)
        self.assertEqual(15 * 2048 * 65536, sum(
            n for _o, n, _k, _d in loaded.iter_extents(
                max_part_bytes=MiB, max_part_extents=4096)))

    def test_parts_per_delta_capped(self):
        spool = self.spool(max_delta_parts=3)
        spool.put(self.inst, 0, zero_part(self.inst, 0, 2, 16))
        e = self.assertRaises(exception.DeltaTooManyParts, spool.put,
                              self.inst, 0, zero_part(self.inst, 0, 3, 16))
        self.assertIsInstance(e, exception.InvalidDelta)
        self.assertIn('part 3 is beyond the limit of 3 parts per delta '
                      '([manager] max_delta_parts)', str(e))
        self.assertIn('raise max_delta_parts', str(e))

    def test_deltas_per_instance_capped(self):
        spool = self.spool(max_deltas_per_instance=2, max_age=600)
        other = base.new_uuid()
        spool.put(self.inst, 0, zero_part(self.inst, 0, 0, 16))
        spool.put(self.inst, 1, zero_part(self.inst, 1, 0, 16))
        spool.put(other, 7, zero_part(other, 7, 0, 16))
        # NOTE: more parts of a held delta are welcome.
        spool.put(self.inst, 1, zero_part(self.inst, 1, 1, 16))
        e = self.assertRaises(exception.TooManyDeltas, spool.put, self.inst,
                              2, zero_part(self.inst, 2, 0, 16))
        # NOTE: a StorageError: the agent sends it again later.
        self.assertIsInstance(e, exception.StorageError)
        self.assertIn('holds parts of 2 uncommitted deltas of this '
                      'instance ([manager] max_deltas_per_instance = 2)',
                      str(e))
        self.assertIn('spool_max_age = 600 s', str(e))
        spool.drop_through(self.inst, 0)
        spool.put(self.inst, 2, zero_part(self.inst, 2, 0, 16))
        self.assertEqual({self.inst: [1, 2], other: [7]}, spool.deltas())

    def test_sweep_drops_abandoned_deltas(self):
        """Deltas that got no part for max_age go, memory and files; a
        delta still arriving, or whose commit started, stays."""
        spool = self.spool(memory_bytes=MiB, max_age=600)
        for i in range(20):
            spool.put(self.inst, 0, zero_part(self.inst, 0, i))
        self.assertTrue(self.files())
        self.now += 500
        spool.put(self.inst, 1, zero_part(self.inst, 1, 0))
        other = base.new_uuid()
        spool.put(other, 3, zero_part(other, 3, 0, 16))
        self.now += 200
        spool.touch(other, 3)
        self.assertEqual([(self.inst, 0)], spool.sweep())
        self.assertEqual({self.inst: [1], other: [3]}, spool.deltas())
        self.assertFalse([f for f in self.files()
                          if f.startswith('%s/%012d' % (self.inst, 0))])
        self.now += 601
        self.assertEqual(2, len(spool.sweep()))
        self.assertEqual(({}, [], 0), (spool.deltas(), self.files(),
                                       spool.held_bytes))

    def test_sweep_drops_old_files_of_a_previous_run(self):
        first = self.spool(memory_bytes=0, max_age=600)
        first.put(self.inst, 5, zero_part(self.inst, 5, 0, 16))
        first.put(self.inst, 6, zero_part(self.inst, 6, 0, 16))
        restarted = self.spool(max_age=600)
        self.assertEqual([], restarted.sweep())
        old = time.time() - 601
        os.utime(os.path.join(self.root, self.inst, '%012d' % 5),
                 (old, old))
        self.assertEqual([(self.inst, 5)], restarted.sweep())
        self.assertEqual(['%s/%012d/000000.part' % (self.inst, 6)],
                         self.files())
