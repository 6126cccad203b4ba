"""Hostile and malformed images are refused before anything reads them."""

import contextlib
import errno
import json
import os
import struct
import threading

from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot import importer
from ha_snapshot.tests import base

MiB = base.MiB


@contextlib.contextmanager
def fifo_watch(path):
    """A FIFO at ``path``; yields a list that gets True if anyone opens it.

    Opening a FIFO for writing without blocking succeeds only while a
    reader has it open, so a poller notices any read attempt; the write end
    it opened also unblocks that reader at once.
    """
    os.mkfifo(path)
    opened, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                stop.wait(0.001)
                continue
            opened.append(True)
            os.close(fd)
    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield opened
    finally:
        stop.set()
        t.join(5)


class InspectTestCase(base.TestCase):

    def inspect(self, path, fmt='qcow2', **kw):
        kw.setdefault('max_virtual_size', 1 << 40)
        return image_inspect.inspect(path, fmt, **kw)

    def hostile(self, name, backing, backing_fmt='raw', size='1M'):
        path = self.path(name)
        base.qemu_img('create', '-q', '-f', 'qcow2', '-u', '-F', backing_fmt,
                      '-b', backing, path, size)
        return path

    def assertRefused(self, reason, path, fmt='qcow2', **kw):
        e = self.assertRaises(exception.ImageError, self.inspect, path, fmt,
                              **kw)
        self.assertIn(reason, str(e))
        self.assertIn(path, str(e))

    def test_plain_images(self):
        q = self.make_qcow2('a.qcow2', 4 * MiB, 'write -P 1 0 64k')
        info = self.inspect(q)
        self.assertEqual((4 * MiB, 65536, None),
                         (info.virtual_size, info.cluster_size,
                          info.backing_file))
        raw = self.path('a.raw')
        with open(raw, 'wb') as f:
            f.truncate(2 * MiB)
        self.assertEqual(2 * MiB, self.inspect(raw, 'raw').virtual_size)

    def test_backing_files_refused_for_whole_images(self):
        for name, backing in [('passwd', '/etc/passwd'),
                              ('json', 'json:{"driver":"raw","file":{'
                               '"driver":"file","filename":"/etc/passwd"}}'),
                              ('http', 'http://127.0.0.1:9/disk')]:
            path = self.hostile(name + '.qcow2', backing)
            self.assertRefused('backing', path)

    def test_protocol_backing_refused_for_overlays(self):
        for name, backing in [('json', 'json:{"driver":"raw","file":{'
                               '"driver":"file","filename":"/etc/passwd"}}'),
                              ('http', 'http://127.0.0.1:9/disk'),
                              ('nbd', 'nbd:127.0.0.1:10809')]:
            path = self.hostile(name + '.qcow2', backing)
            self.assertRefused('not a plain local path', path,
                               allow_backing=True)

    def test_unexpected_backing_refused(self):
        prev = self.make_qcow2('prev.qcow2', MiB)
        path = self.hostile('ov.qcow2', '/etc/passwd', size=str(MiB))
        self.assertRefused('not the expected', path, allow_backing=True,
                           expected_backing=prev)
        ok = base.new_overlay(self.path('ok.qcow2'), prev)
        self.assertEqual(prev, self.inspect(
            ok, allow_backing=True, expected_backing=prev).backing_file)

    def test_data_file_refused(self):
        victim = self.path('victim')
        with open(victim, 'wb') as f:
            f.write(b'secret' * 1000)
        path = self.path('df.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', '-o',
                      'data_file=%s,data_file_raw=on' % victim, path, '1M')
        self.assertRefused('data_file', path)
        self.assertRefused('data_file', path, allow_backing=True)

    def test_encrypted_refused(self):
        # NOTE: a LUKS qcow2 made by qemu-img benchmarks PBKDF and sometimes
        # fails on a busy machine; the header's crypt_method field is what
        # every reader goes by.
        for method in (1, 2):
            path = self.make_qcow2('enc%d.qcow2' % method, MiB)
            with open(path, 'r+b') as f:
                f.seek(32)
                f.write(struct.pack('>I', method))
            self.assertRefused('encrypted', path)

    def test_wrong_format_refused(self):
        raw = self.path('disk.raw')
        with open(raw, 'wb') as f:
            f.write(b'\x01' * MiB)
        self.assertRefused('it is raw, expected qcow2', raw)
        q = self.make_qcow2('a.qcow2', MiB)
        self.assertRefused('it is qcow2, expected raw', q, 'raw')

    def test_bad_magic_and_truncated(self):
        q = self.make_qcow2('bad.qcow2', 4 * MiB, 'write -P 7 0 4M')
        with open(q, 'r+b') as f:
            f.write(b'XXXX')
        self.assertRefused('expected qcow2', q)
        t = self.make_qcow2('trunc.qcow2', 4 * MiB, 'write -P 7 0 4M')
        os.truncate(t, 100000)
        self.assertRefused('corruptions', t)
        empty = self.path('empty')
        open(empty, 'wb').close()
        self.assertRefused('empty', empty)

    def test_huge_virtual_size_refused(self):
        path = self.path('huge.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', path, '100T')
        self.assertRefused('exceeds the limit', path,
                           max_virtual_size=8 << 40)
        # A header edited to claim an absurd size (2^62 bytes).
        q = self.make_qcow2('edit.qcow2', MiB)
        with open(q, 'r+b') as f:
            f.seek(24)
            f.write(struct.pack('>Q', 1 << 62))
        self.assertRefused('exceeds the limit', q)

    def test_not_a_file(self):
        self.assertRaises(exception.ImageNotFound, self.inspect,
                          self.path('missing'))
        self.assertRaises(exception.ImageNotFound, self.inspect, self.tmp)

    def test_nothing_outside_is_opened(self):
        """Hostile files naming a FIFO: nobody may ever open the FIFO."""
        fifo = self.path('watch.fifo')
        # The data file is created as a regular file, then becomes the FIFO.
        df = self.path('df.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', '-o',
                      'data_file=%s,data_file_raw=on' % fifo, df, '1M')
        os.unlink(fifo)
        with fifo_watch(fifo) as opened:
            cases = [
                self.hostile('b1.qcow2', fifo),
                self.hostile('b2.qcow2', 'json:' + json.dumps(
                    {'driver': 'raw',
                     'file': {'driver': 'file', 'filename': fifo}})),
            ]
            cases.append(df)
            conf = base.make_conf(self.store_dir)
            store = self.make_store(conf)
            inst = base.new_uuid()
            for path in cases:
                self.assertRaises(exception.HaSnapshotException,
                                  importer.import_file, conf, store, inst,
                                  path)
            # An overlay of a real baseline that names the FIFO as backing:
            # accepted as an overlay only with a null backing, or refused.
            basef = self.make_qcow2('base.qcow2', MiB, 'write -P 5 0 1M')
            importer.import_file(conf, store, inst, basef)
            ov = self.hostile('b3.qcow2', fifo, size=str(MiB))
            self.assertRaises(exception.UnsafeImage, importer.import_file,
                              conf, store, inst, ov)
        self.assertEqual([], opened)
