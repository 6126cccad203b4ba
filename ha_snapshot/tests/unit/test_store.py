"""The recovery-image store over the file driver, with real qemu-img.

:class:`StoreTests` holds the tests every storage backend must pass; it is
mixed into one TestCase per backend: :class:`StoreTestCase` here (file) and
the Swift one in ha_snapshot/tests/functional/test_store_swift.py.
"""

import json
import os
import time

import fixtures
import zstandard

from ha_snapshot import codec
from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot import importer
from ha_snapshot import storage
from ha_snapshot.storage import objects
from ha_snapshot.tests import base

MiB = base.MiB


class StoreTests:
    """Backend-independent store tests, mixed into a base.TestCase.

    The TestCase provides ``backend_conf(**overrides)``, a configuration
    whose ``[storage] backend_url`` is a fresh, empty store, and
    ``store_snapshot()``, a value that changes when anything in the store
    does. Objects are only reached through the driver.
    """

    def setUp(self):
        super().setUp()
        self.conf = self.backend_conf(storage__chunk_size=MiB)
        self.store = self.make_store(self.conf)
        self.inst = base.new_uuid()

    def import_(self, path, inst=None, project=None):
        return importer.import_file(self.conf, self.store, inst or self.inst,
                                    path, project=project)

    def export(self, rp_id=None, inst=None, fmt='raw'):
        out = self.path('export-%s.%s' % (base.new_uuid(), fmt))
        self.store.export(inst or self.inst, out, rp_id=rp_id, fmt=fmt)
        return out

    def chain(self):
        """A baseline and two overlays; returns (paths, flattened views)."""
        b = self.make_qcow2('base.qcow2', 5 * MiB + 512,
                            'write -P 0x11 0 3M', 'write -P 0x12 5M 512')
        o1 = base.new_overlay(self.path('o1.qcow2'), b)
        base.qemu_io(o1, 'write -P 0x21 1000 70000', 'write -z 2M 512k')
        o2 = base.new_overlay(self.path('o2.qcow2'), o1)
        base.qemu_io(o2, 'discard 0 64k', 'write -P 0x31 4M 1M')
        paths = [b, o1, o2]
        views = [base.flatten(p, self.path('view%d.raw' % i))
                 for i, p in enumerate(paths)]
        return paths, views

    def test_chain_exports_every_restore_point(self):
        paths, views = self.chain()
        rps = [self.import_(p) for p in paths]
        self.assertEqual([1, 2, 3], [rp.number for rp in rps])
        for rp, view in zip(rps, views):
            self.assertTrue(base.same_image(self.export(rp.id), view))
            q = self.export(rp.id, fmt='qcow2')
            self.assertTrue(base.same_image(q, view, 'qcow2', 'raw'))
        self.assertEqual([], self.store.verify())

    def test_zero_chunks_never_stored_and_export_is_sparse(self):
        b = self.make_qcow2('b.qcow2', 64 * MiB, 'write -P 1 10M 1M')
        rp = self.import_(b)
        self.assertEqual([10], sorted(rp.chunks))
        self.assertEqual(1, len(list(self.store.driver.list('chunks/'))))
        out = self.export()
        self.assertLess(os.stat(out).st_blocks * 512, 4 * MiB)
        # Zeroing the only chunk leaves nothing stored in the manifest.
        o = base.new_overlay(self.path('o.qcow2'), b)
        base.qemu_io(o, 'write -z 10M 1M')
        self.assertEqual({}, self.import_(o).chunks)

    def test_dedup_within_project_not_across(self):
        b = self.make_qcow2('b.qcow2', 8 * MiB, 'write -P 9 0 8M')
        self.import_(b, project='p1')
        before = len(list(self.store.driver.list('chunks/')))
        other = base.new_uuid()
        rp = self.import_(b, inst=other, project='p1')
        self.assertEqual(0, rp.new_chunks)
        self.assertEqual(before, len(list(self.store.driver.list('chunks/'))))
        rp = self.import_(b, inst=base.new_uuid(), project='p2')
        self.assertEqual(1, rp.new_chunks)  # 8 identical chunks, one object

    def test_unknown_and_malformed_instance(self):
        self.assertRaises(exception.InstanceNotFound,
                          self.store.get_restore_point, base.new_uuid())
        self.assertRaises(exception.InvalidInstance,
                          self.store.restore_points, '../x')
        b = self.make_qcow2('b.qcow2', MiB, 'write -P 1 0 64k')
        self.import_(b)
        self.assertRaises(exception.RestorePointNotFound,
                          self.store.get_restore_point, self.inst,
                          base.new_uuid())

    def wire_delta(self, path, parent, sequence=1, vsize=None):
        info = image_inspect.inspect(path, 'qcow2', max_virtual_size=1 << 40,
                                     allow_backing=True)
        d = delta_images.from_image(info, instance=self.inst,
                                    project='default', sequence=sequence,
                                    parent=parent, max_part_bytes=MiB,
                                    max_part_extents=64)
        prim = json.loads(json.dumps(d.to_primitive()))
        if vsize:
            prim['header']['virtual_size'] = vsize
        return prim

    def test_merge_reuses_the_newest_listed_unless_it_changed(self):
        """A caller's newest_listed() answer spares merge() reading the
        newest manifest again, only while it is still the newest."""
        paths, views = self.chain()
        rp0 = self.import_(paths[0])
        gets = []
        real_get = self.store.driver.get

        def get(key):
            gets.append(key)
            return real_get(key)
        self.useFixture(fixtures.MockPatchObject(self.store.driver, 'get',
                                                 get))
        listed = self.store.newest_listed(self.inst)
        self.assertEqual(rp0.id, listed[0].id)
        self.assertEqual([rp0.key], gets)
        gets.clear()
        rp1 = self.store.merge(delta_mod.Delta.from_primitive(
            self.wire_delta(paths[1], rp0.id)), None, listed)
        self.assertNotIn(rp0.key, gets)
        self.assertEqual(rp0.id, rp1.parent)
        # Stale: the newest is rp1 now; the answer listed rp0.
        gets.clear()
        rp2 = self.store.merge(delta_mod.Delta.from_primitive(
            self.wire_delta(paths[2], rp1.id, sequence=2)), None, listed)
        self.assertIn(rp1.key, gets)
        self.assertEqual(rp1.id, rp2.parent)
        self.assertTrue(base.same_image(self.export(rp2.id), views[2]))

    def test_bad_delta_leaves_store_untouched(self):
        paths, views = self.chain()
        rp = self.import_(paths[0])
        prim = self.wire_delta(paths[1], rp.id)
        before = self.store_snapshot()
        # A bad checksum in the last part: nothing may be written at all.
        prim['parts'][-1]['sha256'] = 'f' * 64
        self.assertRaises(exception.InvalidDelta, self.store.merge,
                          delta_mod.Delta.from_primitive(prim))
        self.assertEqual(before, self.store_snapshot())
        for mutated, error in [
                (self.wire_delta(paths[1], base.new_uuid()),
                 exception.DeltaParentMismatch),
                (self.wire_delta(paths[1], rp.id, vsize=10 * MiB),
                 exception.InvalidDelta)]:
            self.assertRaises(error, self.store.merge,
                              delta_mod.Delta.from_primitive(mutated))
            self.assertEqual(before, self.store_snapshot())

    def test_resent_delta_is_idempotent(self):
        paths, views = self.chain()
        rp0 = self.import_(paths[0])
        prim = self.wire_delta(paths[1], rp0.id, sequence=7)
        rp1 = self.store.merge(delta_mod.Delta.from_primitive(prim))
        again = self.store.merge(delta_mod.Delta.from_primitive(prim))
        self.assertEqual(rp1.id, again.id)
        self.assertEqual(2, len(self.store.restore_points(self.inst)))

    def test_concurrent_commit_loses_cleanly(self):
        paths, views = self.chain()
        rp0 = self.import_(paths[0])
        prim = self.wire_delta(paths[1], rp0.id)

        def sneak(rp):
            # Another manager commits the same restore point number first.
            self.store.driver.put(rp.key, rp.encode())
        store = self.make_store(self.conf, hooks={'before_commit': sneak})
        self.assertRaises(exception.ConcurrentMerge, store.merge,
                          delta_mod.Delta.from_primitive(prim))

    def test_verify_names_broken_objects(self):
        paths, views = self.chain()
        for p in paths:
            self.import_(p)
        self.assertEqual([], self.store.verify(self.inst))
        first = self.store.restore_points(self.inst)[0]
        chunks = sorted({objects.chunk_key(first.scope, s)
                         for s in first.chunks.values()})
        self.assertEqual(2, len(chunks))
        # Corrupt one chunk, delete another, garble the newest manifest.
        driver = self.store.driver
        blob = bytearray(driver.get(chunks[0]))
        blob[len(blob):100] = bytes(max(0, 100 - len(blob)))
        blob[100:102] = b'\xff\xfe'  # NOTE: as a pwrite at offset 100
        driver.put(chunks[0], bytes(blob))
        driver.delete(chunks[1])
        newest = self.store.newest(self.inst).key
        driver.put(newest, b'not a manifest')
        broken = dict(self.store.verify())
        self.assertIn(newest, broken)
        self.assertIn(chunks[1], broken)
        self.assertIn('missing', broken[chunks[1]])
        self.assertIn(chunks[0], broken)

    def test_gc_removes_only_unreferenced_after_grace(self):
        paths, views = self.chain()
        for p in paths:
            self.import_(p)
        self.conf.set_override('keep_last', 1, group='retention')
        self.conf.set_override('age_tiers', [], group='retention')
        store = self.make_store(self.conf)
        removed = store.apply_retention(self.inst)
        self.assertEqual(2, len(removed))
        # Within the grace period nothing goes.
        self.assertEqual(0, store.gc()['chunks_removed'])
        late = self.make_store(self.conf, clock=lambda: 1e12)
        result = late.gc()
        self.assertGreater(result['chunks_removed'], 0)
        self.assertEqual([], late.verify())
        self.assertTrue(base.same_image(self.export(), views[-1]))

    def test_retention_decodes_each_manifest_once(self):
        """A commit's retention pass decodes only manifests it has not
        seen; a manifest removed and written again under the same key is
        read again (never a stale id)."""
        disk = self.make_qcow2('disk.qcow2', 2 * MiB, 'write -P 0x11 0 1M')
        info = image_inspect.inspect(disk, 'qcow2', max_virtual_size=1 << 40)
        sequence = iter(range(100))

        def add_point(store):
            newest = store.newest(self.inst)
            store.merge(delta_images.from_image(
                info, instance=self.inst, project='p',
                sequence=next(sequence), parent=newest and newest.id,
                max_part_bytes=MiB, max_part_extents=64, full=True))
        self.conf.set_override('keep_last', 2, group='retention')
        self.conf.set_override('age_tiers', [], group='retention')
        store = self.make_store(self.conf)
        for _ in range(3):
            add_point(store)
        decoded = []
        real = objects.decode_manifest

        def counting(key, blob):
            decoded.append(key)
            return real(key, blob)
        self.patch(objects, 'decode_manifest', counting)
        ids = [rp.id for rp in store.restore_points(self.inst)]
        del decoded[:]
        self.assertEqual(ids[:1], store.apply_retention(self.inst))
        self.assertEqual(3, len(decoded))
        add_point(store)
        del decoded[:]
        self.assertEqual(ids[1:2], store.apply_retention(self.inst))
        self.assertEqual(1, len(decoded))
        # Every manifest removed, the instance protected again: the same
        # keys (numbers 1 to 3) now hold other restore points.
        for rp in store.restore_points(self.inst):
            store.driver.delete(rp.key)
        for _ in range(3):
            add_point(store)
        fresh = [rp.id for rp in store.restore_points(self.inst)]
        self.assertEqual(3, len(fresh))
        self.assertEqual(fresh[:1], store.apply_retention(self.inst))

    def test_retention_forgets_what_it_removed(self):
        """What retention remembers of manifests does not grow with the
        restore points ever made, only with those kept."""
        disk = self.make_qcow2('disk.qcow2', 2 * MiB, 'write -P 0x11 0 64k')
        info = image_inspect.inspect(disk, 'qcow2', max_virtual_size=1 << 40)
        self.conf.set_override('keep_last', 3, group='retention')
        self.conf.set_override('age_tiers', [], group='retention')
        store = self.make_store(self.conf)
        parent = None
        for sequence in range(40):
            parent = store.merge(delta_images.from_image(
                info, instance=self.inst, project='p', sequence=sequence,
                parent=parent, max_part_bytes=MiB, max_part_extents=64,
                full=True)).id
            store.apply_retention(self.inst)
        self.assertEqual(3, len(store.restore_points(self.inst)))
        self.assertLessEqual(len(store._summaries), 3)

    def test_chunks_stored_ahead_are_remembered_within_the_bound(self):
        """Deltas abandoned after their parts were stored ahead (never
        merged nor discarded) leave at most PRESTORED_KEYS entries."""
        self.useFixture(fixtures.MockPatch(
            'ha_snapshot.storage.store.PRESTORED_KEYS', 8))
        store = self.make_store(self.conf)
        keys = []
        for sequence in range(5 * 8):
            data = b'%08d' % sequence * 512
            sha, new = store._put_chunk('s', data, False,
                                        owner=(self.inst, sequence))
            self.assertEqual(len(data), new)
            keys.append(objects.chunk_key('s', sha))
        self.assertEqual(keys[-8:], list(store._prestored))

    def test_gc_during_merge_keeps_reused_chunks(self):
        """A chunk unreferenced when gc lists, reused by a merge: kept."""
        b = self.make_qcow2('b.qcow2', 4 * MiB, 'write -P 3 0 4M')
        self.import_(b)
        # Make the instance's restore point vanish, and run the gc below
        # at a time when the chunk, as imported, is older than the grace.
        for rp in self.store.restore_points(self.inst):
            self.store.driver.delete(rp.key)
        [chunk] = list(self.store.driver.list('chunks/'))
        grace = self.conf.storage.gc_grace_period
        cutoff = chunk.mtime + 0.001
        time.sleep(0.05)  # NOTE: the merge's touch comes after ``cutoff``.
        ran = []

        def gc_now(rp):
            ran.append(self.make_store(
                self.conf, clock=lambda: cutoff + grace).gc())
        store = self.make_store(self.conf, hooks={'before_commit': gc_now})
        rp = importer.import_file(self.conf, store, base.new_uuid(), b)
        self.assertEqual(0, ran[0]['chunks_removed'])
        self.assertEqual(0, rp.new_chunks)
        self.assertEqual([], self.store.verify())

    def test_gc_racing_touch_puts_object_back(self):
        b = self.make_qcow2('b.qcow2', MiB, 'write -P 3 0 1M')
        self.import_(b)
        [chunk] = list(self.store.driver.list('chunks/'))
        cutoff = chunk.mtime + 0.001
        time.sleep(0.05)
        # Listed as old, then touched by a merge before the delete lands.
        self.assertTrue(self.store.driver.touch(chunk.key))
        [touched] = list(self.store.driver.list(chunk.key))
        self.assertGreater(touched.mtime, cutoff)
        self.assertFalse(self.store.driver.delete_if_older(chunk.key, cutoff))
        self.assertTrue(self.store.driver.exists(chunk.key))
        self.assertTrue(self.store.driver.delete_if_older(
            chunk.key, touched.mtime + 10))
        self.assertFalse(self.store.driver.exists(chunk.key))

    def test_slow_merge_commits_nothing(self):
        b = self.make_qcow2('b.qcow2', MiB, 'write -P 3 0 1M')
        ticks = iter([0.0, 1e6])
        store = self.make_store(self.conf, clock=lambda: next(ticks))
        self.assertRaises(exception.MergeTooSlow, importer.import_file,
                          self.conf, store, self.inst, b)
        self.assertEqual([], self.store.restore_points(self.inst))

    def test_manifest_is_self_consistent(self):
        b = self.make_qcow2('b.qcow2', MiB, 'write -P 3 0 1M')
        rp = self.import_(b)
        blob = self.store.driver.get(rp.key)
        self.assertEqual(rp.id, objects.decode_manifest(rp.key, blob).id)
        self.assertRaises(exception.CorruptObject, objects.decode_manifest,
                          objects.manifest_key(self.inst, 9), blob)

    def _rewritten(self, rp, change):
        d = json.loads(codec.decompress(rp.encode(), objects.MAX_MANIFEST))
        change(d)
        return zstandard.ZstdCompressor().compress(json.dumps(d).encode())

    def test_manifest_of_a_newer_replica_is_read_and_kept_whole(self):
        # NOTE: rolling upgrade: a newer replica adds optional keys; this
        # one reads the manifest and writes the keys back untouched.
        b = self.make_qcow2('b.qcow2', MiB, 'write -P 3 0 1M')
        rp = self.import_(b)
        blob = self._rewritten(rp, lambda d: d.update(
            memory_state={'bytes': 5}, future_flag=True))
        read = objects.decode_manifest(rp.key, blob)
        self.assertEqual(rp.chunks, read.chunks)
        self.assertEqual({'memory_state': {'bytes': 5}, 'future_flag': True},
                         read.extra)
        self.assertNotIn('extra', read.summary())
        again = json.loads(codec.decompress(read.encode(),
                                            objects.MAX_MANIFEST))
        self.assertEqual({'bytes': 5}, again['memory_state'])
        self.assertNotIn('extra', again)

    def test_manifest_without_a_needed_key_is_refused(self):
        b = self.make_qcow2('b.qcow2', MiB, 'write -P 3 0 1M')
        rp = self.import_(b)
        blob = self._rewritten(rp, lambda d: d.pop('virtual_size'))
        e = self.assertRaises(exception.CorruptObject,
                              objects.decode_manifest, rp.key, blob)
        self.assertIn('virtual_size', str(e))


class StoreTestCase(StoreTests, base.TestCase):
    """The store over the file driver, and what only files can show."""

    def backend_conf(self, **overrides):
        return base.make_conf(self.store_dir, **overrides)

    def store_snapshot(self):
        return base.tree_digest(self.store_dir)

    def test_gc_killed_mid_delete_puts_touched_chunk_back(self):
        b = self.make_qcow2('b.qcow2', MiB, 'write -P 3 0 1M')
        self.import_(b)
        [chunk] = list(self.store.driver.list('chunks/'))
        path = os.path.join(self.store_dir, chunk.key)
        # What delete_if_older() leaves if killed right after its rename.
        trash = os.path.join(os.path.dirname(path),
                             '.trash-%s-0123abcd' % os.path.basename(path))
        os.rename(path, trash)
        self.assertEqual(1, len(self.store.verify()))
        self.store.gc()
        self.assertEqual([], self.store.verify())
        self.assertFalse(os.path.exists(trash))

    def test_unknown_backend(self):
        for url, reason in [('nosuch://x', 'No storage backend'),
                            ('file://host/x', 'local path'),
                            ('/no/scheme', 'no scheme')]:
            e = self.assertRaises(exception.BackendNotFound,
                                  storage.get_driver, self.conf, url)
            self.assertIn(reason, str(e))


class FullDeltaTestCase(base.TestCase):
    """A re-baseline (full delta) on top of existing restore points."""

    def test_full_delta_replaces_the_image(self):
        conf = base.make_conf(self.store_dir, storage__chunk_size=MiB)
        store = self.make_store(conf)
        inst = base.new_uuid()
        old = self.make_qcow2('old.qcow2', 4 * MiB, 'write -P 0x11 0 4M')
        rp1 = importer.import_file(conf, store, inst, old)
        new = self.make_qcow2('new.qcow2', 6 * MiB, 'write -P 0x22 1M 512k')
        info = image_inspect.inspect(new, 'qcow2', max_virtual_size=1 << 40)
        d = delta_images.from_image(info, instance=inst, project='default',
                                    sequence=1, parent=rp1.id,
                                    max_part_bytes=MiB, max_part_extents=64,
                                    full=True)
        self.assertTrue(d.header.full)
        rp2 = store.merge(d)
        self.assertEqual(6 * MiB, rp2.virtual_size)
        out = self.path('out.raw')
        store.export(inst, out, rp_id=rp2.id)
        self.assertTrue(base.same_image(out, new, 'raw', 'qcow2'))
        store.export(inst, out, rp_id=rp1.id)
        self.assertTrue(base.same_image(out, old, 'raw', 'qcow2'))
