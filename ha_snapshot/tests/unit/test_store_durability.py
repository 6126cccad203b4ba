"""How a merge into the file store becomes durable, and what a failed or
killed one leaves.

A merge writes its chunks through one batch of the file driver (fsyncs in
parallel, renames and directory fsyncs at its commit) and only then puts
the manifest. These tests record the real fsync, rename and link calls of a
merge (the calls still happen) and check their order: no manifest may be
durable before any chunk it names, nor a chunk's name before its bytes.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import fixtures

from ha_snapshot import importer
from ha_snapshot.storage import objects
from ha_snapshot.tests import base

MiB = base.MiB


class MergeDurabilityTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir, storage__chunk_size=MiB)
        self.store = self.make_store(self.conf)
        self.inst = base.new_uuid()

    def record(self):
        """Record (call, path...) of every fsync, rename and link."""
        events, lock = [], threading.Lock()
        real = {name: getattr(os, name) for name in ('fsync', 'rename',
                                                     'link')}

        def fsync(fd):
            path = os.readlink('/proc/self/fd/%d' % fd)
            real['fsync'](fd)
            with lock:
                events.append(('fsync', path))

        def moved(name):
            def call(src, dst, **kwargs):
                real[name](src, dst, **kwargs)
                with lock:
                    events.append((name, src, dst))
            return call
        self.useFixture(fixtures.MonkeyPatch('os.fsync', fsync))
        self.useFixture(fixtures.MonkeyPatch('os.rename', moved('rename')))
        self.useFixture(fixtures.MonkeyPatch('os.link', moved('link')))
        return events

    def test_chunks_durable_before_their_manifest(self):
        b = self.make_qcow2('b.qcow2', 8 * MiB, 'write -P 0x11 0 3M',
                            'write -P 0x12 5M 2M')
        rp0 = importer.import_file(self.conf, self.store, self.inst, b)
        o = base.new_overlay(self.path('o.qcow2'), b)
        # NOTE: partly overwritten chunks (the parent's rest is read) and a
        # chunk in a fresh chunk directory.
        base.qemu_io(o, 'write -P 0x21 64k 64k', 'write -P 0x22 5M 128k',
                     'write -P 0x23 7M 1M')
        events = self.record()
        rp = importer.import_file(self.conf, self.store, self.inst, o)
        self.assertEqual(rp0.id, rp.parent)
        path = lambda key: os.path.join(self.store_dir, key)  # noqa: E731
        manifest = path(rp.key)
        [commit] = [i for i, e in enumerate(events)
                    if e[0] == 'link' and e[2] == manifest]
        synced = [(i, e[1]) for i, e in enumerate(events) if e[0] == 'fsync']
        self.assertIn(events[commit][1],
                      [p for i, p in synced if i < commit])
        new = set(rp.chunks.values()) - set(rp0.chunks.values())
        self.assertEqual(3, len(new))
        for sha in new:
            target = path(objects.chunk_key(rp.scope, sha))
            [(r, tmp)] = [(i, e[1]) for i, e in enumerate(events)
                          if e[0] == 'rename' and e[2] == target]
            self.assertIn(tmp, [p for i, p in synced if i < r],
                          'chunk renamed before its bytes were fsynced')
            d = os.path.dirname(target)
            while d != os.path.dirname(self.store_dir):
                self.assertIn(d, [p for i, p in synced if r < i < commit],
                              'directory %s not fsynced between the chunk '
                              'rename and the manifest' % d)
                d = os.path.dirname(d)
        # NOTE: the manifest's directory, and the ones its put created
        # (a new instance's), are fsynced after it.
        after = [p for i, p in synced if i > commit]
        self.assertIn(os.path.dirname(manifest), after)
        inst = base.new_uuid()
        events.clear()
        rp = importer.import_file(self.conf, self.store, inst, b)
        synced = [e[1] for e in events if e[0] == 'fsync']
        for d in (os.path.join(self.store_dir, 'instances', inst),
                  os.path.join(self.store_dir, 'instances')):
            self.assertIn(d, synced)
        self.assertEqual([], self.store.verify())

    def test_failed_merge_leaves_no_files(self):
        b = self.make_qcow2('b.qcow2', 8 * MiB, *[
            'write -P %d %dM 1M' % (0x40 + i, i) for i in range(8)])
        real_write = self.store.driver._write_tmp
        written = []

        def full(path, data, sync):
            if len(written) == 4:
                raise OSError(28, 'No space left on device')
            written.append(path)
            return real_write(path, data, sync)
        self.store.driver._write_tmp = full
        self.assertRaises(OSError, importer.import_file, self.conf,
                          self.store, self.inst, b)
        self.assertEqual(4, len(written))
        left = [n for _d, _s, names in os.walk(self.store_dir)
                for n in names if not _d.endswith('.locks')]
        self.assertEqual([], left)
        self.store.driver._write_tmp = real_write
        rp = importer.import_file(self.conf, self.store, self.inst, b)
        self.assertEqual(8, rp.new_chunks)
        self.assertEqual([], self.store.verify())

    def test_killed_batch_leaves_only_invisible_leftovers(self):
        # NOTE: a real process killed after its batch wrote (fsynced or
        # not) and before its commit: its objects were never visible.
        script = textwrap.dedent('''
            import os, signal, sys, urllib.parse
            from ha_snapshot.storage import impl_file
            d = impl_file.FileDriver(urllib.parse.urlsplit(sys.argv[1]),
                                     None)
            batch = d.batch()
            for i in range(6):
                batch.put('chunks/p-x/%03d/%03d' % (i, i), b'x' * 4096)
            print('written', flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        ''')
        proc = subprocess.run(
            [sys.executable, '-c', script, 'file://' + self.store_dir],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(-signal.SIGKILL, proc.returncode, proc.stderr)
        self.assertEqual('written', proc.stdout.strip())
        driver = self.store.driver
        self.assertEqual([], list(driver.list('chunks/')))
        self.assertFalse(driver.exists('chunks/p-x/000/000'))
        tmps = [n for _d, _s, names in os.walk(self.store_dir)
                for n in names if n.startswith('.tmp-')]
        self.assertEqual(6, len(tmps))
        self.assertEqual(0, driver.cleanup(0))  # NOTE: fresh: kept.
        self.assertEqual(6, driver.cleanup(float('inf')))
