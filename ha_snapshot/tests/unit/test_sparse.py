"""Whole images written from their pieces (exports, fetched restore points)."""

import os

from ha_snapshot import exception
from ha_snapshot.image import sparse
from ha_snapshot.tests import base

MiB = base.MiB


class WriteImageTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        os.makedirs(super().path('out'))

    def path(self, *names):
        # NOTE: a directory of its own, to see every file left behind.
        return super().path('out', *names)

    def pieces(self):
        return [(3 * MiB, b'\x33' * MiB), (0, b'\x11' * 4096)]

    def test_raw_is_sparse_and_holds_the_pieces(self):
        out = self.path('disk.raw')
        sparse.write_image(out, 8 * MiB, self.pieces())
        self.assertEqual(8 * MiB, os.path.getsize(out))
        # NOTE: only the pieces take space (filesystems round up).
        self.assertLess(os.stat(out).st_blocks * 512, 2 * MiB)
        with open(out, 'rb') as f:
            data = f.read()
        self.assertEqual(b'\x11' * 4096, data[:4096])
        self.assertEqual(b'\x33' * MiB, data[3 * MiB:4 * MiB])
        self.assertEqual(bytes(MiB), data[4 * MiB:5 * MiB])
        self.assertEqual(['disk.raw'], os.listdir(self.path()))

    def test_qcow2_equals_raw(self):
        sparse.write_image(self.path('a.raw'), 8 * MiB, self.pieces())
        sparse.write_image(self.path('a.qcow2'), 8 * MiB, self.pieces(),
                           fmt='qcow2')
        self.assertIn('"format": "qcow2"', base.qemu_img(
            'info', '--output=json', self.path('a.qcow2')))
        self.assertTrue(base.same_image(self.path('a.raw'),
                                        self.path('a.qcow2'), fmt_b='qcow2'))
        self.assertEqual(['a.qcow2', 'a.raw'], sorted(os.listdir(
            self.path())))

    def test_failing_piece_leaves_nothing(self):
        """A piece that raises (a chunk failing its checksum) leaves no
        destination and no temporary file, and an existing destination
        untouched."""
        out = self.path('disk.qcow2')
        with open(out, 'wb') as f:
            f.write(b'before')

        def pieces():
            yield 0, b'\x11' * 4096
            raise exception.HaSnapshotException('chunk 1 does not match')
        for fmt in sparse.FORMATS:
            self.assertRaisesRegex(exception.HaSnapshotException,
                                   'chunk 1 does not match',
                                   sparse.write_image, out, MiB, pieces(),
                                   fmt=fmt)
        self.assertEqual(['disk.qcow2'], os.listdir(self.path()))
        with open(out, 'rb') as f:
            self.assertEqual(b'before', f.read())

    def test_bad_format_and_missing_directory(self):
        self.assertRaisesRegex(exception.HaSnapshotException,
                               "Unsupported image format 'vmdk'",
                               sparse.write_image, self.path('x'), MiB, [],
                               fmt='vmdk')
        self.assertRaisesRegex(exception.HaSnapshotException,
                               'directory %s does not exist'
                               % self.path('no'), sparse.write_image,
                               self.path('no', 'x'), MiB, [])
