"""The memory state spool: content-defined chunks that survive changed
pages (the store deduplicates them), the spool's round trip and its
checks, and the configuration a resume depends on."""

import os
import queue
import random
import struct

from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.hypervisor import memstate
from ha_snapshot import memory_state as ms
from ha_snapshot.tests import base

PAGE = 4096


def stream(pages: int, seed: int = 1, changed=(), zero_every: int = 3):
    """A RAM section as QEMU 7.2 writes it: zero pages (header + one
    byte) and normal pages (header + 4 KiB)."""
    rnd = random.Random(seed)
    out = bytearray()
    for p in range(pages):
        if p % zero_every == 0:
            out += struct.pack('>Q', p * PAGE | 0x22) + b'\0'
            continue
        page = random.Random(seed * 1000003 + p).randbytes(PAGE)
        if p in changed:
            page = rnd.randbytes(PAGE)
        out += struct.pack('>Q', p * PAGE | 0x28) + page
    return bytes(out)


def chunks_of(data: bytes, feed: int = 65536 + 7) -> list:
    out = []
    c = ms.Chunker(out.append)
    for i in range(0, len(data), feed):
        c.feed(data[i:i + feed])
    c.close()
    return out


class ChunkerTest(base.TestCase):

    def test_chunks_rebuild_the_stream_within_bounds(self):
        data = stream(4096)
        chunks = chunks_of(data)
        self.assertEqual(data, b''.join(chunks))
        self.assertGreater(len(chunks), 4)
        for c in chunks[:-1]:
            self.assertGreaterEqual(len(c), ms.MIN_CHUNK)
            self.assertLessEqual(len(c), ms.MAX_CHUNK)

    def test_boundaries_do_not_depend_on_how_data_arrives(self):
        data = stream(2048)
        self.assertEqual(chunks_of(data, 4099), chunks_of(data, 1 << 20))

    def test_changed_pages_cost_only_their_chunks(self):
        first = chunks_of(stream(8192))
        # NOTE: pages that become zero shrink the stream: offsets move,
        # content-defined boundaries do not.
        second_data = stream(8192, changed={100, 5000})
        second = chunks_of(second_data)
        new = set(second) - set(first)
        new_bytes = sum(len(c) for c in new)
        self.assertLess(new_bytes, 0.1 * len(second_data))
        self.assertGreaterEqual(len(new), 2)

    def test_no_boundary_means_max_chunks(self):
        data = b'\x01' * (ms.MAX_CHUNK * 2 + 10)
        chunks = chunks_of(data)
        self.assertEqual([ms.MAX_CHUNK, ms.MAX_CHUNK, 10],
                         [len(c) for c in chunks])


class SpoolTest(base.TestCase):

    def test_round_trip(self):
        # NOTE: mostly zero pages, as a guest's RAM is: it compresses.
        data = stream(4096, zero_every=1) + stream(256)
        path = self.path('s.hsm')
        w = ms.SpoolWriter(path)
        for i in range(0, len(data), 10000):
            w.write(data[i:i + 10000])
        index = w.finish({'m': '256'}, pause_seconds=0.01)
        self.assertEqual(len(data), index.size)
        self.assertLess(os.path.getsize(path), len(data))
        self.assertEqual(data, b''.join(ms.iter_spool(path)))
        self.assertEqual({'m': '256'}, ms.load_index(path).config)
        m = index.manifest()
        self.assertEqual(len(data), sum(n for _s, n in m['chunks']))

    def test_a_damaged_chunk_is_refused(self):
        path = self.path('s.hsm')
        w = ms.SpoolWriter(path)
        w.write(stream(300))
        index = w.finish({})
        ref = index.chunks[0]
        with open(path, 'rb') as f:
            frame = ms.read_frame(f, ref)
        self.assertRaises(exception.HaSnapshotException, ms.unpack_chunk,
                          frame, '0' * 64, ref.length)
        with open(path, 'r+b') as f:
            f.seek(0)
            f.write(struct.pack('>I', ref.stored + 1))
        self.assertRaises(exception.HaSnapshotException, list,
                          ms.iter_spool(path))

    def test_unreadable_index(self):
        path = self.path('none.hsm')
        e = self.assertRaises(exception.HaSnapshotException,
                              ms.load_index, path)
        self.assertIn(path, str(e))


class ConfigTest(base.TestCase):

    ARGV = ['qemu', '-name', 'guest=a', '-machine', 'q35', '-accel', 'tcg',
            '-m', '256', '-S', '-blockdev', '{"file": "/a/disk"}',
            '-device', 'virtio-blk-pci,drive=disk0,id=vd0',
            '-chardev', 'socket,id=serial0,path=/x/console',
            '-kernel', '/boot/k', '-append', 'quiet']

    def test_paths_do_not_count(self):
        other = list(self.ARGV)
        other[other.index('-blockdev') + 1] = '{"file": "/b/disk"}'
        other[other.index('-kernel') + 1] = '/elsewhere/k'
        ms.check_config('a', ms.config_of(self.ARGV), ms.config_of(other))

    def test_hardware_counts(self):
        saved = ms.config_of(self.ARGV)
        for change in (('-m', '512'), ('-machine', 'pc')):
            argv = list(self.ARGV)
            argv[argv.index(change[0]) + 1] = change[1]
            e = self.assertRaises(exception.MemoryStateMismatch,
                                  ms.check_config, 'a', saved,
                                  ms.config_of(argv))
            self.assertIn(change[0].lstrip('-'), str(e))
        more = self.ARGV + ['-device', 'virtio-serial-pci,id=vser0']
        self.assertRaises(exception.MemoryStateMismatch, ms.check_config,
                          'a', saved, ms.config_of(more))
        fewer = self.ARGV[:-4]
        e = self.assertRaises(exception.MemoryStateMismatch, ms.check_config,
                              'a', saved, ms.config_of(fewer))
        self.assertIn('kernel', str(e))


class WatchTest(base.TestCase):
    """The wait of a save or a load for its migration's end."""

    def watch(self):
        subs = hv_base.Subscribers()

        class Driver:
            def subscribe(self, vm, callback, events=None):
                return subs.add(callback, events)

        def send(*events):
            q = queue.Queue()
            for kind, data in events:
                q.put(hv_base.Event('vm', kind, data, 1.0))
            q.put(None)
            subs.dispatch(q, 'vm')
        return memstate._Watch(Driver(), object()), send

    def test_migration_outcome(self):
        w, send = self.watch()
        send(('STOP', {}), ('MIGRATION', {'status': 'active'}))
        self.assertFalse(w.done.is_set())
        send(('RESUME', {}), ('MIGRATION', {'status': 'completed'}),
             (hv_base.PROCESS_EXITED, {}))
        self.assertTrue(w.done.is_set())
        self.assertEqual('completed', w.status)

    def test_a_vm_that_dies_ends_the_wait(self):
        # NOTE: QEMU killed mid-save sends no MIGRATION event: the save
        # waited for its timeout, holding the VM's restart.
        for kind in (hv_base.PROCESS_EXITED, hv_base.MONITOR_CLOSED):
            w, send = self.watch()
            send(('STOP', {}), ('MIGRATION', {'status': 'active'}),
                 (kind, {'reason': 'killed'}))
            self.assertTrue(w.done.is_set())
            self.assertEqual('interrupted (%s)' % kind, w.status)
            w.cancel()
            send(('MIGRATION', {'status': 'completed'}))
            self.assertEqual('interrupted (%s)' % kind, w.status)
