"""The pure-Python qcow2 reader equals ``qemu-img map``, refuses what it
does not handle, opens nothing but its file; the overlay writer equals
``qemu-img create``."""

import os
import shutil
import struct

import fixtures
import hypothesis
from hypothesis import strategies as st

from ha_snapshot import exception
from ha_snapshot.hypervisor import qcow2new
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.image import qcow2
from ha_snapshot.image import qemu
from ha_snapshot.image import ranges
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import test_inspect

MiB = base.MiB
LIMIT = 1 << 40


def map_extents(path):
    """What qemu-img map says the file holds itself (the old path)."""
    facts = qemu.info(path, 'qcow2')
    info = image_inspect.ImageInfo(
        path=path, format='qcow2', virtual_size=facts['virtual-size'],
        cluster_size=facts['cluster-size'], backing_file=None)
    return [(e.offset, e.length, e.kind, e.host_offset)
            for e in ranges._map_extents(info, None)]


def reader_extents(path):
    return list(qcow2.read_layout(path, max_virtual_size=LIMIT).extents)


# One guest operation: (command, offset in 512-byte sectors, sectors).
OPS = st.lists(st.tuples(
    st.sampled_from(['write -P 0x5a', 'write -z', 'write -z -u', 'discard',
                     'write -P 0']),
    st.integers(0, 8191), st.integers(1, 600)), min_size=1, max_size=8)


class ReaderEqualsQemuImgMap(base.TestCase):

    def check_file(self, path):
        expected = map_extents(path)
        try:
            self.assertEqual(expected, reader_extents(path))
        except exception.Qcow2Unsupported as e:
            # NOTE: refusing is the reader's contract for what it cannot
            # tell apart from QEMU's view (e.g. on ext4 a cluster QEMU
            # allocated with one sector written keeps the rest as an
            # unwritten extent, which SEEK_HOLE reports as a hole); the
            # caller then maps the file with qemu-img, as asserted here.
            self.assertIn('lies in a hole of the file', str(e))
            info = image_inspect.inspect(path, 'qcow2',
                                         max_virtual_size=LIMIT,
                                         allow_backing=True)
            self.assertEqual(expected, [
                (x.offset, x.length, x.kind, x.host_offset)
                for x in ranges.own_extents(info)])

    @hypothesis.settings(derandomize=True, max_examples=25, deadline=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(cluster_bits=st.sampled_from([9, 12, 16, 21]),
                      size_sectors=st.integers(1, 8192), ops=OPS,
                      overlay=st.booleans(), v2=st.booleans())
    def test_generated_images(self, cluster_bits, size_sectors, ops,
                              overlay, v2):
        d = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(d, 'img.qcow2')
        opts = 'cluster_size=%d,compat=%s' % (1 << cluster_bits,
                                              '0.10' if v2 else '1.1')
        size = size_sectors * 512
        if overlay:
            below = os.path.join(d, 'below.qcow2')
            base.qemu_img('create', '-q', '-f', 'qcow2', below, str(size))
            base.qemu_io(below, 'write -P 0x11 0 %d' % size)
            base.qemu_img('create', '-q', '-f', 'qcow2', '-o', opts, '-F',
                          'qcow2', '-b', below, path, str(size))
        else:
            base.qemu_img('create', '-q', '-f', 'qcow2', '-o', opts, path,
                          str(size))
        cmds = []
        for cmd, start, count in ops:
            start = min(start, size_sectors - 1)
            count = min(count, size_sectors - start)
            cmds.append('%s %d %d' % (cmd, start * 512, count * 512))
        base.qemu_io(path, *cmds)
        self.check_file(path)

    def test_partial_last_cluster_and_many_tables(self):
        # 4 KiB clusters: an L2 table covers 2 MiB, so 9 MiB needs five;
        # the virtual size ends inside a cluster.
        path = self.path('a.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', '-o',
                      'cluster_size=4096', path, str(9 * MiB + 1536))
        base.qemu_io(path, 'write -P 1 0 5000', 'write -z 65536 8192',
                     'write 1M 300k', 'discard 1M 8192',
                     'write -z -u 2M 64k', 'write -P 3 %d 1536' % (9 * MiB),
                     'write -P 4 %d 4096' % (6 * MiB))
        self.check_file(path)
        self.assertEqual(9 * MiB + 1536, reader_extents(path)[-1][0]
                         + reader_extents(path)[-1][1])

    def test_extents_read_the_same_bytes(self):
        """pread at the reader's host offsets gives the guest's bytes."""
        path = self.make_qcow2('b.qcow2', 4 * MiB, 'write -P 0x61 0 100k',
                               'write -P 0x62 2M 64k', 'write -z 1M 64k')
        raw = base.flatten(path, self.path('b.raw'))
        layout = qcow2.read_layout(path, max_virtual_size=LIMIT)
        with open(path, 'rb') as f, open(raw, 'rb') as g:
            for off, length, kind, host in layout.extents:
                g.seek(off)
                want = g.read(length)
                if kind == qcow2.ZERO:
                    self.assertEqual(bytes(length), want)
                else:
                    f.seek(host)
                    self.assertEqual(want, f.read(length))


class ReaderRefuses(base.TestCase):

    def assertUnsupported(self, reason, path, limit=LIMIT):
        e = self.assertRaises(exception.Qcow2Unsupported, qcow2.read_layout,
                              path, max_virtual_size=limit)
        self.assertIn(reason, str(e))
        self.assertIn(path, str(e))

    def test_hostile_backing_names_are_only_reported(self):
        for name, backing in [('passwd', '/etc/passwd'),
                              ('json', 'json:{"driver":"raw","file":{'
                               '"driver":"file","filename":"/etc/passwd"}}'),
                              ('http', 'http://127.0.0.1:9/disk')]:
            path = self.path(name + '.qcow2')
            base.qemu_img('create', '-q', '-f', 'qcow2', '-u', '-F', 'raw',
                          '-b', backing, path, '1M')
            layout = qcow2.read_layout(path, max_virtual_size=LIMIT)
            self.assertEqual(backing, layout.backing_file)
            # The agent's path never accepts it: full inspection refuses.
            prev = self.make_qcow2('prev-%s.qcow2' % name, MiB)
            self.assertRaises(exception.UnsafeImage,
                              image_inspect.inspect_own_overlay, path,
                              max_virtual_size=LIMIT, expected_backing=prev)

    def test_fifo_backing_and_data_file_never_opened(self):
        fifo = self.path('watch.fifo')
        ov = self.path('ov.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', '-u', '-F', 'raw',
                      '-b', fifo, ov, '1M')
        df = self.path('df.qcow2')
        open(fifo, 'wb').close()
        base.qemu_img('create', '-q', '-f', 'qcow2', '-o',
                      'data_file=%s,data_file_raw=on' % fifo, df, '1M')
        os.unlink(fifo)
        with test_inspect.fifo_watch(fifo) as opened:
            self.assertEqual(fifo, qcow2.read_layout(
                ov, max_virtual_size=LIMIT).backing_file)
            self.assertUnsupported('incompatible features', df)
        self.assertEqual([], opened)
        self.assertRaises(exception.ImageNotFound, qcow2.read_layout, fifo,
                          max_virtual_size=LIMIT)

    def test_encrypted_compressed_and_huge(self):
        path = self.make_qcow2('enc.qcow2', MiB)
        with open(path, 'r+b') as f:
            f.seek(32)
            f.write(struct.pack('>I', 2))
        self.assertUnsupported('encrypted', path)
        src = self.make_qcow2('src.qcow2', MiB, 'write -P 9 0 256k')
        comp = self.path('comp.qcow2')
        base.qemu_img('convert', '-c', '-O', 'qcow2', src, comp)
        self.assertUnsupported('compressed cluster', comp)
        # The old path still reads it (through a raw copy).
        self.assertTrue(map_extents(comp))
        big = self.path('big.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', big, '100T')
        self.assertUnsupported('virtual size', big, limit=8 << 40)
        ext = self.path('ext.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', '-o',
                      'extended_l2=on', ext, '1M')
        self.assertUnsupported('incompatible features', ext)

    def test_damaged_tables(self):
        good = self.make_qcow2('good.qcow2', 4 * MiB, 'write -P 7 0 4M')
        l1_off = struct.unpack('>Q', open(good, 'rb').read(48)[40:48])[0]

        def variant(name, offset, data):
            path = self.path(name)
            shutil.copy(good, path)
            with open(path, 'r+b') as f:
                f.seek(offset)
                f.write(data)
            return path
        self.assertUnsupported('not a qcow2 header',
                               variant('magic', 0, b'XXXX'))
        self.assertUnsupported('version', variant('v9', 4, b'\0\0\0\x09'))
        self.assertUnsupported('cluster bits',
                               variant('cb', 20, struct.pack('>I', 30)))
        self.assertUnsupported('L1 table', variant(
            'l1', 40, struct.pack('>Q', 1 << 50)))
        self.assertUnsupported('L1 size', variant(
            'l1s', 36, struct.pack('>I', 0)))
        self.assertUnsupported('L2 table', variant(
            'l2', l1_off, struct.pack('>Q', (1 << 63) | (1 << 40))))
        self.assertUnsupported('L2 table', variant(
            'l2u', l1_off, struct.pack('>Q', (1 << 63) | 0x10200)))
        self.assertUnsupported('reserved bits', variant(
            'l1r', l1_off, struct.pack('>Q', (1 << 63) | 0x30000 | 1)))
        trunc = self.path('trunc.qcow2')
        shutil.copy(good, trunc)
        os.truncate(trunc, 300000)
        self.assertUnsupported('outside the file', trunc)

    @hypothesis.settings(derandomize=True, max_examples=40, deadline=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(edits=st.lists(st.tuples(
        st.integers(0, 4 * 65536 + 4095), st.integers(0, 255)),
        min_size=1, max_size=6))
    def test_fuzzed_metadata(self, edits):
        """Any corruption of the metadata: a clear refusal or extents that
        stay inside the file and the virtual size, nothing else."""
        d = self.useFixture(fixtures.TempDir()).path
        if not hasattr(self, '_fuzz_src'):
            self._fuzz_src = self.make_qcow2(
                'fuzz.qcow2', 4 * MiB, 'write -P 1 0 192k',
                'write -z 1M 64k', 'write -P 2 3M 64k')
        path = os.path.join(d, 'f.qcow2')
        shutil.copy(self._fuzz_src, path)
        with open(path, 'r+b') as f:
            for off, byte in edits:
                f.seek(off)
                f.write(bytes([byte]))
        size = os.stat(path).st_size
        try:
            layout = qcow2.read_layout(path, max_virtual_size=8 * MiB)
        except exception.Qcow2Unsupported:
            return
        end = 0
        for off, length, kind, host in layout.extents:
            self.assertGreaterEqual(off, end)
            end = off + length
            self.assertLessEqual(end, layout.virtual_size)
            if kind == qcow2.DATA:
                self.assertLessEqual(host + length, size)
        self.assertLessEqual(layout.virtual_size, 8 * MiB)


class OverlayWriter(base.TestCase):

    def test_same_bytes_as_qemu_img_create(self):
        below = self.make_qcow2('below.qcow2', MiB)
        for cs in (8192, 65536, 2 << 20):
            for size in (MiB, 64 * MiB + 512, 10 << 30):
                for fmt in ('qcow2', 'raw'):
                    self.assertTrue(qcow2new.layout_fits(size, cs, below,
                                                         fmt))
                    want = self.path('q-%d-%d-%s' % (cs, size, fmt))
                    base.qemu_img('create', '-q', '-f', 'qcow2', '-u',
                                  '-F', fmt, '-b', below, '-o',
                                  'cluster_size=%d' % cs, want, str(size))
                    got = want + '.py'
                    open(got, 'wb').close()
                    qcow2new.create(got, size, cs, below, fmt)
                    with open(want, 'rb') as a, open(got, 'rb') as b:
                        self.assertEqual(a.read(), b.read(), want)
        report = qemu.check(got)
        self.assertFalse(report.get('corruptions') or report.get('leaks')
                         or report.get('check-errors'), report)
        info = image_inspect.inspect_own_overlay(
            got, max_virtual_size=LIMIT, expected_backing=below)
        self.assertEqual((10 << 30, 2 << 20, below, ()),
                         (info.virtual_size, info.cluster_size,
                          info.backing_file, info.layout.extents))

    def test_layouts_left_to_qemu_img(self):
        self.assertFalse(qcow2new.layout_fits(MiB, 4096, '/x', 'qcow2'))
        self.assertFalse(qcow2new.layout_fits(MiB, 65536, '/x', 'vmdk'))
        self.assertFalse(qcow2new.layout_fits(MiB, 65536, '/' * 2000,
                                              'qcow2'))
        self.assertFalse(qcow2new.layout_fits(1000, 65536, '/x', 'qcow2'))
