"""The manager without the bus: spool, commit, durable ack, recovery."""

import json
import os
import threading
import time

import fixtures

from ha_snapshot.db import api as db_api
from ha_snapshot.db import membership as db_membership
from ha_snapshot.db import migration
from ha_snapshot import delta_images
from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.manager import intake
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot.manager import membership as membership_mod
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.manager import replica_counters
from ha_snapshot.manager import spool as spool_mod
from ha_snapshot.storage import store as store_mod
from ha_snapshot.tests import base

MiB = base.MiB


class _Base(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir, storage__chunk_size=MiB,
                                   image__max_part_bytes=MiB)
        self.conf.set_override(
            'connection', 'sqlite:///' + self.path('db.sqlite'),
            group='database')
        self.db = db_api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(self.conf, database=self.db)
        self.store = self.make_store(self.conf)
        self.spool = spool_mod.Spool(self.path('spool'), MiB)
        self.mgr = manager_mod.Manager(self.conf, self.store, self.db,
                                       self.spool)
        self.inst = base.new_uuid()
        self.base = self.make_qcow2('base.qcow2', 8 * MiB,
                                    'write -P 0x11 0 3M')

    def delta(self, path, sequence, parent, backing=True):
        info = image_inspect.inspect(path, 'qcow2', max_virtual_size=1 << 40,
                                     allow_backing=backing)
        d = delta_images.from_image(info, instance=self.inst, project='p1',
                                    sequence=sequence, parent=parent,
                                    max_part_bytes=MiB, max_part_extents=64)
        return json.loads(json.dumps(d.to_primitive()))

    def ship(self, prim):
        for part in prim['parts']:
            self.mgr.put_part(self.inst, prim['header']['sequence'], part)
        return self.mgr.commit_delta(prim['header'])

    def register(self):
        return self.mgr.register_instance(self.inst, 'p1', 'host1', 'qemu',
                                          {})

    def spooled_files(self):
        return [n for _d, _s, names in os.walk(self.path('spool'))
                for n in names]



class ManagerTestCase(_Base):

    def test_stale_sequence_is_refused_before_the_store(self):
        # A delta whose sequence is not newer than the newest restore
        # point's, on top of that point (a stale resend), used to merge
        # into the store and then fail in the database (one restore point
        # per sequence): a manifest the database does not know.
        self.register()
        ack = self.ship(self.delta(self.base, 0, None, backing=False))
        stale = self.delta(self.base, 0, ack['restore_point'],
                           backing=False)
        e = self.assertRaises(exception.InvalidDelta, self.ship, stale)
        self.assertIn('stale resend', str(e))
        self.assertEqual([ack['restore_point']], [
            rp.id for rp in self.store.restore_points(self.inst)])
        self.assertEqual([ack['restore_point']], [
            rp.id for rp in self.db.list_restore_points(self.inst)])

    def test_register_ship_ack(self):
        self.assertIsNone(self.register()['newest_restore_point'])
        ack = self.ship(self.delta(self.base, 0, None, backing=False))
        o1 = base.new_overlay(self.path('o1.qcow2'), self.base)
        base.qemu_io(o1, 'write -P 0x22 1M 2M')
        ack2 = self.ship(self.delta(o1, 1, ack['restore_point']))
        self.assertEqual(2, ack2['number'])
        row = self.db.get_instance(self.inst)
        self.assertEqual(ack2['restore_point'], row.newest_restore_point_id)
        self.assertEqual(1, row.last_sequence)
        self.assertEqual(2, len(self.db.list_restore_points(self.inst)))
        self.assertEqual(ack2['restore_point'],
                         self.register()['newest_restore_point'])
        # The spool is emptied once durable.
        self.assertEqual([], self.spooled_files())
        self.assertEqual(0, self.spool.held_bytes)
        # Replayed after a lost ack: same restore point, nothing new.
        again = self.ship(self.delta(o1, 1, ack['restore_point']))
        self.assertEqual(ack2['restore_point'], again['restore_point'])
        self.assertEqual(2, len(self.store.restore_points(self.inst)))
        # The restore point can be fetched back chunk by chunk.
        manifest = self.mgr.get_manifest(self.inst, None)
        self.assertEqual(ack2['restore_point'], manifest['id'])
        self.assertEqual(sorted(manifest['chunks']), ['0', '1', '2'])
        self.assertTrue(self.mgr.get_chunk(self.inst, manifest['id'], 1))

    def test_bad_messages_rejected_nothing_stored(self):
        self.register()
        good = self.delta(self.base, 0, None, backing=False)
        before = base.tree_digest(self.store_dir)
        unknown = json.loads(json.dumps(good))
        unknown['header']['instance'] = base.new_uuid()
        for part in unknown['parts']:
            part['instance'] = unknown['header']['instance']
        self.assertRaises(exception.InstanceNotFound, self.mgr.put_part,
                          unknown['header']['instance'], 0,
                          unknown['parts'][0])
        self.assertRaises(exception.InstanceNotFound, self.mgr.commit_delta,
                          unknown['header'])
        # Oversized part.
        big = dict(good['parts'][0], payload='A' * (4 * MiB))
        self.assertRaises(exception.InvalidDelta, self.mgr.put_part,
                          self.inst, 0, big)
        # A part of another delta.
        self.assertRaises(exception.InvalidDelta, self.mgr.put_part,
                          self.inst, 5, good['parts'][0])
        # Corrupted part, then a missing part.
        bad = json.loads(json.dumps(good))
        bad['parts'][0]['sha256'] = '0' * 64
        self.assertRaises(exception.InvalidDelta, self.ship, bad)
        self.spool.drop(self.inst)
        self.assertRaises(exception.InvalidDelta, self.mgr.commit_delta,
                          good['header'])
        # Out of order: a delta whose parent is not the newest.
        wrong = self.delta(self.base, 3, base.new_uuid(), backing=False)
        self.assertRaises(exception.DeltaParentMismatch, self.ship, wrong)
        self.assertEqual([], self.db.list_restore_points(self.inst))
        self.assertEqual([], self.store.restore_points(self.inst))
        # NOTE: whole chunks of checked parts are stored ahead of their
        # merge (Manager.put_part): a delta refused at commit leaves only
        # unreferenced chunks, which gc collects after its grace period.
        later = self.make_store(self.conf, clock=lambda: time.time() + (
            self.conf.storage.gc_grace_period + 1))
        later.gc()
        self.assertEqual(before, base.tree_digest(self.store_dir))

    def test_refused_parts_do_not_stay_in_the_spool(self):
        self.register()
        prim = self.delta(self.base, 0, None, backing=False)
        bad = json.loads(json.dumps(prim))
        bad['parts'][0]['sha256'] = '0' * 64
        # NOTE: a part is checked whole when it arrives.
        e = self.assertRaises(exception.InvalidDelta, self.mgr.put_part,
                              self.inst, 0, bad['parts'][0])
        self.assertIn('part 0: checksum mismatch', str(e))
        self.assertEqual([], self.spooled_files())
        self.assertEqual(0, self.spool.held_bytes)
        self.assertEqual(1, self.ship(prim)['number'])
        self.assertEqual([], self.spooled_files())
        self.assertEqual(0, self.spool.held_bytes)

    def test_part_checked_on_arrival(self):
        self.register()
        good = self.delta(self.base, 0, None, backing=False)['parts'][0]
        cases = {
            'payload is not base64': dict(good, payload='@' * 8),
            'corrupt compressed payload': dict(
                good, payload=good['payload'][:-8] + 'AAAAAAAA'),
            'data extents hold': dict(good, raw_size=good['raw_size'] - 1),
            'overlaps or precedes': dict(good, extents=[
                [0, 65536, 'data'], [0, 65536, 'data']]),
        }
        for reason, part in cases.items():
            e = self.assertRaises(exception.InvalidDelta, self.mgr.put_part,
                                  self.inst, 0, part)
            self.assertIn(reason, str(e))
        self.assertEqual(0, self.spool.held_bytes)
        self.mgr.put_part(self.inst, 0, good)
        self.assertGreater(self.spool.held_bytes, good['raw_size'])
        self.assertLess(self.spool.held_bytes, good['raw_size'] + 8192)

    def test_chunks_stored_while_parts_arrive(self):
        """Whole chunks of a part are in the store before the commit; the
        commit counts them as new and references them."""
        self.register()
        disk = self.make_qcow2('three.qcow2', 8 * MiB, 'write -P 0x11 0 1M',
                               'write -P 0x22 1M 1M', 'write -P 0x33 2M 1M',
                               'write -P 0x44 5M 64K')
        prim = self.delta(disk, 0, None, backing=False)
        for part in prim['parts']:
            self.mgr.put_part(self.inst, 0, part)

        def chunks():
            return [n for _d, _s, names in os.walk(
                os.path.join(self.store_dir, 'chunks')) for n in names
                if not n.startswith('.')]
        # NOTE: stored by the manager's threads after put_part answered:
        # three whole chunks; the 64 KiB write is no whole chunk.
        deadline = time.monotonic() + 30
        while len(chunks()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        chunks = chunks()
        self.assertEqual(3, len(chunks))
        self.assertEqual([], self.store.restore_points(self.inst))
        # NOTE: the merge hashes only the chunk no part held whole (the
        # one of the 64 KiB write): the others were hashed on arrival.
        hashed = []
        real_sha256 = store_mod.hashlib.sha256

        def counting(data=b''):
            hashed.append(len(data))
            return real_sha256(data)
        self.patch(store_mod.hashlib, 'sha256', counting)
        self.mgr.commit_delta(prim['header'])
        self.assertEqual([MiB], [n for n in hashed if n == MiB])
        rp = self.store.newest(self.inst)
        self.assertEqual((4, 4 * MiB), (rp.new_chunks, rp.new_bytes))
        self.assertLess(set(chunks), set(rp.chunks.values()))
        self.patch(store_mod.hashlib, 'sha256', real_sha256)
        self.assertEqual([], self.store.verify(self.inst))

    def test_part_sent_again_is_hashed_again(self):
        """Digests taken when a part arrived belong to its bytes: a part
        sent again with other bytes (same delta, same index) is merged
        with its own content, never under the first one's digests."""
        self.register()
        one = self.make_qcow2('one.qcow2', 8 * MiB, 'write -P 0x11 0 1M')
        two = self.make_qcow2('two.qcow2', 8 * MiB, 'write -P 0x22 0 1M')
        first = self.delta(one, 0, None, backing=False)
        second = self.delta(two, 0, None, backing=False)
        self.mgr.put_part(self.inst, 0, first['parts'][0])
        self.mgr.put_part(self.inst, 0, second['parts'][0])
        self.mgr.commit_delta(second['header'])
        out = self.path('out.raw')
        self.store.export(self.inst, out)
        with open(out, 'rb') as f:
            self.assertEqual(b'\x22' * MiB, f.read(MiB))
        self.assertEqual([], self.store.verify(self.inst))

    def test_commit_asked_again(self):
        """A commit asked again while its merge runs is told to ask later
        (no second merge, no RPC thread held for the whole merge); asked
        after it, it gets the same ack, without the parts again."""
        self.register()
        prim = self.delta(self.base, 0, None, backing=False)
        for part in prim['parts']:
            self.mgr.put_part(self.inst, 0, part)
        merging, release = threading.Event(), threading.Event()

        def block(rp):
            merging.set()
            release.wait(30)
        self.store.hooks['before_commit'] = block
        self.patch(intake, 'COMMIT_WAIT', 0.1)
        first = []
        t = threading.Thread(target=lambda: first.append(
            self.mgr.commit_delta(prim['header'])))
        t.start()
        self.assertTrue(merging.wait(30))
        self.assertRaises(exception.MergeInProgress, self.mgr.commit_delta,
                          prim['header'])
        release.set()
        t.join(30)
        self.store.hooks.clear()
        again = self.mgr.commit_delta(prim['header'])
        self.assertEqual(first[0]['restore_point'], again['restore_point'])
        self.assertEqual(1, len(self.store.restore_points(self.inst)))
        self.assertEqual(1, len(self.db.list_restore_points(self.inst)))

    def test_torn_spool_part_is_sent_again(self):
        """A part file torn by a crash (parts are not fsynced) is reported
        as never received whole: the agent sends the delta again."""
        self.register()
        prim = self.delta(self.base, 0, None, backing=False)
        on_disk = manager_mod.Manager(
            self.conf, self.store, self.db,
            spool_mod.Spool(self.path('spool'), MiB, memory_bytes=0))
        for part in prim['parts']:
            on_disk.put_part(self.inst, 0, part)
        restarted = spool_mod.Spool(self.path('spool'), MiB)
        path = os.path.join(self.path('spool'), self.inst, '%012d' % 0,
                            '%06d.part' % 0)
        with open(path, 'r+b') as f:
            f.truncate(2)
        mgr = manager_mod.Manager(self.conf, self.store, self.db, restarted)
        e = self.assertRaises(exception.InvalidDelta, mgr.commit_delta,
                              prim['header'])
        self.assertIn('never received', str(e))
        self.assertEqual([], self.store.restore_points(self.inst))
        for part in prim['parts']:
            mgr.put_part(self.inst, 0, part)
        self.assertEqual(1, mgr.commit_delta(prim['header'])['number'])

    def test_full_store_is_not_acknowledged(self):
        self.register()
        prim = self.delta(self.base, 0, None, backing=False)
        # NOTE: where the file driver writes an object's bytes, for a put
        # and for a batch (chunks) alike.
        real_write = self.store.driver._write_tmp
        chunks = os.path.join(self.store_dir, 'chunks')

        def full(path, data, sync):
            if path.startswith(chunks):
                raise OSError(28, 'No space left on device')
            return real_write(path, data, sync)
        self.store.driver._write_tmp = full
        e = self.assertRaises(exception.StorageError, self.ship, prim)
        self.assertIn('full', str(e))
        self.assertEqual([], self.store.restore_points(self.inst))
        self.store.driver._write_tmp = real_write
        self.assertEqual(1, self.ship(prim)['number'])


class IntakeTestCase(_Base):
    """Refused and abandoned deltas leave nothing: spool or store."""

    def setUp(self):
        super().setUp()
        self.register()
        self.first = self.ship(self.delta(self.base, 0, None, backing=False))
        self.before = base.tree_digest(self.store_dir)

    def chunk_files(self):
        return [n for _d, _s, names in os.walk(
            os.path.join(self.store_dir, 'chunks')) for n in names
            if not n.startswith('.')]

    def send(self, prim):
        """put_part every part; wait until their chunks are stored ahead
        (as a slow commit would find them)."""
        have = len(self.chunk_files())
        for part in prim['parts']:
            self.mgr.put_part(self.inst, prim['header']['sequence'], part)
        base.wait_for(lambda: len(self.chunk_files()) > have, 30,
                      'chunks stored ahead of the merge')

    def beyond(self, sequence):
        """A delta with a whole chunk at 64 MiB of an 8 MiB disk."""
        big = self.make_qcow2('big-%d.qcow2' % sequence, 128 * MiB,
                              'write -P 0x%02x 64M 1M' % (0x50 + sequence))
        return self.delta(big, sequence, self.first['restore_point'],
                          backing=False)

    def assert_left_nothing(self):
        self.assertEqual(self.before, base.tree_digest(self.store_dir))
        self.assertEqual([], self.spooled_files())
        self.assertEqual(0, self.spool.held_bytes)
        self.assertEqual({}, self.spool.deltas())

    def test_refused_delta_leaves_nothing_in_the_store(self):
        """A part at 64 MiB of an 8 MiB disk: its chunk is stored ahead
        while it arrives, and removed when the commit refuses it (not
        left for gc's grace period)."""
        prim = self.beyond(1)
        self.send(prim)
        e = self.assertRaises(exception.InvalidDelta, self.mgr.commit_delta,
                              prim['header'])
        self.assertIn('virtual size 134217728 does not match', str(e))
        self.assert_left_nothing()
        self.assertEqual(1, len(self.store.restore_points(self.inst)))

    def test_every_refusal_leaves_nothing(self):
        def project(h):
            h['project'] = 'p2'

        def header(h):
            h['format_version'] = 99

        def parent(h):
            h['parent'] = base.new_uuid()

        def count(h):
            h['part_count'] += 1
        cases = {'does not own this instance': project,
                 'unsupported format version': header,
                 'but the newest restore point is': parent,
                 'part 1 of 2 was never received': count}
        for sequence, (reason, spoil) in enumerate(cases.items(), 1):
            o = base.new_overlay(self.path('o%d.qcow2' % sequence),
                                 self.base)
            base.qemu_io(o, 'write -P 0x%02x 4M 1M' % (0x60 + sequence))
            prim = self.delta(o, sequence, self.first['restore_point'])
            self.send(prim)
            spoil(prim['header'])
            e = self.assertRaises(exception.InvalidDelta,
                                  self.mgr.commit_delta, prim['header'])
            self.assertIn(reason, str(e))
            self.assert_left_nothing()

    def test_delta_of_a_deleted_instance_leaves_nothing(self):
        """Deleted by Nova (the notification marks it deleted) while its
        delta arrives: refused at commit, nothing left."""
        prim = self.beyond(1)
        self.send(prim)
        self.db.mark_instance_deleted(self.inst)
        self.assertRaises(exception.InstanceNotFound, self.mgr.commit_delta,
                          prim['header'])
        self.assert_left_nothing()

    def test_parts_without_a_whole_chunk_are_not_stored_ahead(self):
        """Once the store knows the image's chunk size, a part that holds
        no whole chunk is not handed to a chunk-writing thread; one that
        holds a whole chunk still is."""
        submitted = []
        submit = self.mgr.prestores.submit

        def counted(instance, sequence, *args):
            submitted.append(sequence)
            return submit(instance, sequence, *args)
        self.patch(self.mgr.prestores, 'submit', counted)
        parent = self.first['restore_point']
        for sequence in (1, 2, 3):
            o = base.new_overlay(self.path('p%d.qcow2' % sequence),
                                 self.base)
            base.qemu_io(o, 'write -P 0x%02x %dk 64k' % (
                0x30 + sequence, 2048 + 64 * sequence))
            ack = self.ship(self.delta(o, sequence, parent))
            parent = ack['restore_point']
        # NOTE: the first one's prestore learnt the layout.
        self.assertEqual([1], submitted)
        o = base.new_overlay(self.path('p4.qcow2'), self.base)
        base.qemu_io(o, 'write -P 0x44 4M 1M')
        ack = self.ship(self.delta(o, 4, parent))
        self.assertEqual([1, 4], submitted)
        self.assertEqual(5, ack['number'])
        self.assertEqual(5, len(self.db.list_restore_points(self.inst)))

    def test_commit_checks_the_row_its_guard_read(self):
        """The row the RPC guard read for this very commit
        (authz.INSTANCE_ROW) is checked instead of a second read; a
        deleted instance's row is refused as one read now would be."""
        reads = []
        get_instance = self.db.get_instance

        def counted(uuid):
            reads.append(uuid)
            return get_instance(uuid)
        self.patch(self.db, 'get_instance', counted)
        o = base.new_overlay(self.path('o1.qcow2'), self.base)
        base.qemu_io(o, 'write -P 0x21 2M 1M')
        prim = self.delta(o, 1, self.first['restore_point'])
        self.send(prim)
        row = get_instance(self.inst)
        reads.clear()
        ack = self.mgr.commit_delta(prim['header'], row=row)
        self.assertEqual([], reads)
        self.assertEqual(2, ack['number'])
        # A row of another instance is not taken for this one's.
        o = base.new_overlay(self.path('o2.qcow2'), self.base)
        base.qemu_io(o, 'write -P 0x22 2M 1M')
        prim = self.delta(o, 2, ack['restore_point'])
        self.send(prim)
        other = self.db.create_instance(base.new_uuid(), 'p1', host='host1')
        self.mgr.commit_delta(prim['header'], row=other)
        self.assertEqual([self.inst], reads)
        # Deleted when the guard looked: refused, nothing left.
        self.before = base.tree_digest(self.store_dir)
        prim = self.beyond(3)
        self.send(prim)
        deleted = self.db.mark_instance_deleted(self.inst)
        self.assertRaises(exception.InstanceNotFound, self.mgr.commit_delta,
                          prim['header'], row=deleted)
        self.assert_left_nothing()

    def test_unprotect_drops_what_its_deltas_sent(self):
        prim = self.beyond(1)
        self.send(prim)
        self.mgr.unprotect(self.inst)
        self.assert_left_nothing()

    def test_superseded_delta_leaves_nothing(self):
        """Parts of a delta the agent gave up (it lost its state and sent
        the next one): the commit of a newer delta removes them."""
        old = self.beyond(1)
        self.send(old)
        o = base.new_overlay(self.path('o2.qcow2'), self.base)
        base.qemu_io(o, 'write -P 0x77 2M 1M')
        self.ship(self.delta(o, 2, self.first['restore_point']))
        rp = self.store.newest(self.inst)
        referenced = {sha for p in self.store.restore_points(self.inst)
                      for sha in p.chunks.values()}
        self.assertEqual(referenced, set(self.chunk_files()))
        self.assertEqual([], self.spooled_files())
        self.assertEqual(2, rp.number)

    def test_delta_with_too_many_parts_leaves_nothing(self):
        self.spool.max_delta_parts = 1
        prim = self.beyond(1)
        o = base.new_overlay(self.path('o2.qcow2'), self.base)
        base.qemu_io(o, 'write -P 0x77 2M 1M', 'write -P 0x78 4M 1M')
        prim = self.delta(o, 1, self.first['restore_point'])
        self.assertEqual(2, len(prim['parts']))
        self.send(dict(prim, parts=prim['parts'][:1]))
        e = self.assertRaises(exception.DeltaTooManyParts, self.mgr.put_part,
                              self.inst, 1, prim['parts'][1])
        self.assertIn('max_delta_parts', str(e))
        self.assert_left_nothing()

    def test_abandoned_delta_swept(self):
        """No part for [manager] spool_max_age: the manager's sweep drops
        its parts and the chunks stored ahead for it."""
        now = [1000.0]
        self.spool.clock = lambda: now[0]
        prim = self.beyond(1)
        self.send(prim)
        self.assertEqual([], self.mgr.sweep())
        now[0] += self.spool.max_age + 1
        self.assertEqual([(self.inst, 1)], self.mgr.sweep())
        self.assert_left_nothing()
        # NOTE: an agent that still wants it is told "never received".
        e = self.assertRaises(exception.InvalidDelta, self.mgr.commit_delta,
                              prim['header'])
        self.assertIn('never received', str(e))

    def test_sweep_drops_deltas_of_deleted_instances(self):
        prim = self.beyond(1)
        self.send(prim)
        self.db.mark_instance_deleted(self.inst)
        self.assertEqual([(self.inst, None)], self.mgr.sweep())
        self.assert_left_nothing()

    def test_sweep_takes_back_chunks_of_a_delta_gone_from_the_spool(self):
        """Chunk writes that outlived their delta's drop (a write slower
        than the wait for it): the next sweep removes their chunks."""
        self.send(self.beyond(1))
        self.spool.drop(self.inst)
        self.assertEqual([], self.mgr.sweep())
        self.assert_left_nothing()

    def test_nothing_kept_per_abandoned_delta(self):
        """The map of chunk writes started ahead keeps none that ended."""
        for sequence in range(1, 4):
            self.send(self.beyond(sequence))
            self.spool.drop(self.inst)
        base.wait_for(lambda: len(self.mgr.prestores) == 0, 30,
                      'chunk writes started ahead to end')


class AgentReactionTestCase(_Base):
    """The agent's shipper against the intake's new refusals (the real
    Manager in-process, no bus): it keeps the delta, waits, and the delta
    lands once the manager takes it."""

    def agent(self, api):
        from ha_snapshot.agent import instance as agent_mod
        from ha_snapshot.agent import state as state_mod
        self.conf.set_override('state_dir', self.path('agent'), group='agent')
        self.conf.set_override('retry_initial', 0.05, group='agent')
        self.conf.set_override('retry_max', 0.1, group='agent')
        from ha_snapshot.agent import shipper as shipper_mod
        self.patch(shipper_mod, 'TOO_MANY_PARTS_WAIT', 0.1)
        state = state_mod.InstanceState(instance=self.inst, project='p1',
                                        spec={})
        disk = self.make_qcow2('two.qcow2', 8 * MiB, 'write -P 0x11 0 1M',
                               'write -P 0x22 2M 1M')
        entry = state_mod.Pending(sequence=0, disk='d', frozen=disk,
                                  backing=None, committable=False,
                                  full=True)
        snap = agent_mod.SnapshotAgent(self.conf, None, api, state, None,
                                       'host1')
        snap.shipper.base_format = lambda entry: 'qcow2'
        return snap, entry

    def test_too_many_parts_then_raised_limit(self):
        self.register()
        self.spool.max_delta_parts = 1
        calls = []

        class Api:
            def put_part(api, instance, sequence, part, timeout=None):
                calls.append(part['index'])
                if len(calls) == 3:
                    # NOTE: the operator raises [manager] max_delta_parts.
                    self.spool.max_delta_parts = 100
                return self.mgr.put_part(instance, sequence, part)

            def commit_delta(api, header, timeout=None):
                return self.mgr.commit_delta(header)
        snap, entry = self.agent(Api())
        with self.assertLogs('ha_snapshot.agent.shipper', 'ERROR') as logs:
            snap.shipper.ship(entry)
        self.assertIn('max_delta_parts', logs.output[0])
        self.assertIn('delta 0 is kept and sent again', logs.output[0])
        self.assertEqual([0, 1, 0, 1], calls)
        self.assertEqual(entry.restore_point,
                         self.store.newest(self.inst).id)

    def test_too_many_deltas_is_retried(self):
        self.register()
        self.spool.max_deltas_per_instance = 1
        stale = self.delta(self.base, 7, None, backing=False)
        self.mgr.put_part(self.inst, 7, stale['parts'][0])
        calls = []

        class Api:
            def put_part(api, instance, sequence, part, timeout=None):
                calls.append(sequence)
                if len(calls) == 3:
                    self.spool.drop(self.inst, 7)  # NOTE: swept
                return self.mgr.put_part(instance, sequence, part)

            def commit_delta(api, header, timeout=None):
                return self.mgr.commit_delta(header)
        snap, entry = self.agent(Api())
        with self.assertLogs('ha_snapshot.agent.instance', 'WARNING') as logs:
            snap.shipper.ship(entry)
        self.assertIn('TooManyDeltas', logs.output[0])
        self.assertEqual(1, self.store.newest(self.inst).number)


class Died(BaseException):
    """The manager process running this recovery is gone."""


class Action:
    name = 'restart'

    def __init__(self, fail=0):
        self.calls = []
        self.fail = fail
        self.dead = False
        self.gate = threading.Event()
        self.gate.set()

    def recover(self, row, restore_point, progress):
        self.gate.wait(30)
        if self.dead:
            raise Died()
        self.calls.append((row.uuid, restore_point))
        progress('doing')
        if self.fail:
            self.fail -= 1
            raise RuntimeError('qemu would not start')


class RecoveryTestCase(_Base):

    def engine(self, action, now=1000.0):
        self.now = now
        self.conf.set_override('cooldown', 60, group='recovery')
        self.conf.set_override('max_attempts', 2, group='recovery')
        eng = recovery_mod.RecoveryEngine(self.conf, self.db, action,
                                          clock=lambda: self.now)
        self.addCleanup(eng.stop)
        return eng

    def protected(self):
        self.register()
        return self.ship(self.delta(self.base, 0, None, backing=False))

    def test_dedup_cooldown_success(self):
        ack = self.protected()
        action = Action()
        action.gate.clear()
        eng = self.engine(action)
        self.assertTrue(eng.report(self.inst, 'qemu exited', {})
                        .startswith('recovering'))
        self.assertTrue(eng.report(self.inst, 'alarm', {})
                        .startswith('duplicate'))
        action.gate.set()
        eng.wait(self.inst, 30)
        self.assertEqual([(self.inst, ack['restore_point'])], action.calls)
        [rec] = self.db.list_recoveries(self.inst)
        self.assertEqual(('succeeded', 'done'), (rec.state, rec.step))
        self.assertEqual('protected', self.db.get_instance(self.inst).status)
        self.assertTrue(eng.report(self.inst, 'again', {})
                        .startswith('ignored: cooldown'))
        self.now += 61
        self.assertTrue(eng.report(self.inst, 'again', {})
                        .startswith('recovering'))
        eng.wait(self.inst, 30)

    def test_failures_capped(self):
        self.protected()
        action = Action(fail=5)
        eng = self.engine(action)
        for _ in range(2):
            self.assertTrue(eng.report(self.inst, 'dead', {})
                            .startswith('recovering'))
            eng.wait(self.inst, 30)
            self.now += 61
        self.assertEqual('failed', self.db.get_instance(self.inst).status)
        self.assertTrue(eng.report(self.inst, 'dead', {})
                        .startswith('ignored'))
        states = [r.state for r in self.db.list_recoveries(self.inst)]
        self.assertEqual(['failed', 'failed'], states)
        self.assertIn('qemu would not start',
                      self.db.list_recoveries(self.inst)[0].error)

    def test_racing_reports_start_one_recovery(self):
        self.protected()
        action = Action()
        action.gate.clear()
        eng = self.engine(action)
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            eng.report(self.inst, 'dead', {}))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        action.gate.set()
        eng.wait(self.inst, 30)
        self.assertEqual(1, sum(r.startswith('recovering') for r in results),
                         results)
        self.assertEqual(1, len(action.calls))

    def test_resume_after_manager_restart(self):
        self.protected()
        action = Action()
        action.gate.clear()
        eng = self.engine(action)
        eng.report(self.inst, 'dead', {})
        # A new engine (the manager restarted) finishes the recovery.
        action2 = Action()
        eng2 = self.engine(action2)
        self.assertEqual(1, eng2.resume())
        eng2.wait(self.inst, 30)
        self.assertEqual('protected', self.db.get_instance(self.inst).status)
        action.dead = True
        action.gate.set()


class RoutingTestCase(_Base):
    """Two manager replicas on one database: the deltas of an instance
    are taken by its owner only; the others name it."""

    def setUp(self):
        super().setUp()
        self.conf.set_override('heartbeat_interval', 60,
                               group='manager_cluster')
        self.replicas = {}
        for host in ('m1', 'm2'):
            m = membership_mod.Membership(self.conf, self.db, host)
            m.start()
            self.addCleanup(m.stop)
            self.replicas[host] = m
        for m in self.replicas.values():
            m.refresh()
        owner = self.replicas['m1'].owner(self.inst)
        self.assertEqual(owner, self.replicas['m2'].owner(self.inst))
        other = ({'m1', 'm2'} - {owner}).pop()
        self.owner = manager_mod.Manager(
            self.conf, self.store, self.db, self.spool,
            membership=self.replicas[owner])
        self.other = manager_mod.Manager(
            self.conf, self.store, self.db, spool_mod.Spool(
                self.path('spool2'), MiB), membership=self.replicas[other])
        self.owner_host, self.other_host = owner, other

    def test_only_the_owner_takes_a_delta_and_every_answer_names_it(self):
        for mgr in (self.owner, self.other):
            reg = mgr.register_instance(self.inst, 'p1', 'host1', 'qemu', {})
            self.assertEqual(self.owner_host, reg['owner'])
        prim = self.delta(self.base, 0, None, backing=False)
        e = self.assertRaises(exception.WrongOwner, self.other.put_part,
                              self.inst, 0, prim['parts'][0])
        self.assertEqual(self.owner_host, e.kwargs['owner'])
        self.assertIn('owned by manager replica %s, not %s'
                      % (self.owner_host, self.other_host), str(e))
        self.assertRaises(exception.WrongOwner, self.other.commit_delta,
                          prim['header'])
        self.assertEqual([], os.listdir(self.path('spool2')))
        for part in prim['parts']:
            self.owner.put_part(self.inst, 0, part)
        ack = self.owner.commit_delta(prim['header'])
        self.assertEqual(self.owner_host, ack['owner'])
        self.assertEqual(1, len(self.store.restore_points(self.inst)))

    def test_the_merging_replica_counts_its_merges_once(self):
        self.owner.register_instance(self.inst, 'p1', 'host1', 'qemu', {})
        prim = self.delta(self.base, 0, None, backing=False)
        for part in prim['parts']:
            self.owner.put_part(self.inst, 0, part)
        ack = self.owner.commit_delta(prim['header'])
        # NOTE: the ack was lost; the agent asks again: merged already.
        self.assertEqual(ack['restore_point'], self.owner.commit_delta(
            prim['header'])['restore_point'])
        rp, = self.store.restore_points(self.inst)
        self.assertGreater(rp.new_bytes, 0)
        mine = self.replicas[self.owner_host]
        self.assertEqual(
            dict(replica_counters.zeros(), deltas_merged=1,
                 shipped_bytes=rp.changed_bytes, stored_bytes=rp.new_bytes),
            mine.counters.snapshot())
        self.assertEqual(replica_counters.zeros(),
                         self.replicas[self.other_host].counters.snapshot())
        # NOTE: in memory until the beat; the beat writes it.
        row = {r.host: r for r in mine.records.replicas(60)}
        self.assertEqual(0, row[self.owner_host].counters['deltas_merged'])
        mine.beat()
        row = {r.host: r for r in mine.records.replicas(60)}
        self.assertEqual(mine.counters.snapshot(),
                         row[self.owner_host].counters)

    def test_a_replica_that_lost_its_standing_names_no_owner(self):
        m = self.replicas[self.owner_host]
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.manager.membership.time.monotonic',
            lambda: m.last_beat + m.dead_after + 1))
        prim = self.delta(self.base, 0, None, backing=False)
        e = self.assertRaises(exception.WrongOwner, self.owner.put_part,
                              self.inst, 0, prim['parts'][0])
        self.assertEqual('unknown', e.kwargs['owner'])
        self.assertIsNone(self.owner.register_instance(
            self.inst, 'p1', 'host1', 'qemu', {})['owner'])

    def test_one_manager_without_membership_takes_everything(self):
        reg = self.register()
        self.assertIsNone(reg['owner'])
        ack = self.ship(self.delta(self.base, 0, None, backing=False))
        self.assertIsNone(ack['owner'])


class StepAction:
    """Records a step, waits at its gate, records another: a recovery
    whose runner can stall (or die) between steps."""

    name = 'restart'

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.previous = []
        self.finished = 0

    def recover(self, row, restore_point, progress):
        self.previous.append(progress.previous_step)
        progress('step-1')
        self.started.set()
        self.gate.wait(30)
        progress('step-2')
        self.finished += 1


class RecoveryLeaseTestCase(_Base):
    """Recoveries under leases (issue 12, item 3): one runner at a time;
    the owner takes over one whose runner died, at its recorded step; the
    runner that lost its lease records nothing more."""

    def setUp(self):
        super().setUp()
        self.conf.set_override('heartbeat_interval', 60,
                               group='manager_cluster')
        self.conf.set_override('lease_duration', 1.0,
                               group='manager_cluster')
        self.register()
        self.ship(self.delta(self.base, 0, None, backing=False))

    def replica(self, host):
        db = db_api.Database(self.conf)
        self.addCleanup(db.dispose)
        m = membership_mod.Membership(self.conf, db, host)
        m.start()
        self.addCleanup(m.stop)
        return m

    def engine(self, membership, action):
        eng = recovery_mod.RecoveryEngine(self.conf, membership.records.db,
                                          action, membership=membership)
        self.addCleanup(eng.stop)
        return eng

    def test_a_dead_runners_recovery_is_taken_over_once(self):
        m1, m2 = self.replica('m1'), self.replica('m2')
        m1.refresh()
        owner = {'m1': m1, 'm2': m2}[m1.owner(self.inst)]
        other = m2 if owner is m1 else m1
        # The recovery starts on the replica that does not own the
        # instance (it got the report); the owner leaves it alone.
        first, second = StepAction(), StepAction()
        runner = self.engine(other, first)
        taker = self.engine(owner, second)
        rec = runner.request(self.inst, None, 'test')
        self.assertTrue(first.started.wait(30))
        self.assertEqual(0, taker.takeover())
        # The runner's database goes away: its lease is not renewed.
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.db.membership.Records.renew_lease',
            _renew_fails_for(other.id)))
        base.wait_for(lambda: taker.takeover() == 1, 30,
                      'the owner to take the recovery over')
        second.gate.set()
        taker.wait(self.inst, 30)
        self.assertEqual(['step-1'], second.previous)
        [done] = self.db.list_recoveries(self.inst)
        self.assertEqual((rec.id, 'succeeded', 'done'),
                         (done.id, done.state, done.step))
        self.assertEqual('protected', self.db.get_instance(self.inst).status)
        # The first runner wakes up: its next step is refused, nothing
        # it does is recorded.
        first.gate.set()
        runner.wait(self.inst, 30)
        self.assertEqual(0, first.finished)
        self.assertEqual(1, second.finished)
        [done] = self.db.list_recoveries(self.inst)
        self.assertEqual(('succeeded', 'done'), (done.state, done.step))
        # Counted by the replica that ran it to its end, not the loser.
        self.assertEqual(1, owner.counters.snapshot()[
            replica_counters.RECOVERIES_SUCCEEDED])
        self.assertEqual(replica_counters.zeros(), other.counters.snapshot())

    def test_a_failed_recovery_is_counted_failed(self):
        m1 = self.replica('m1')
        action = StepAction()
        action.gate.set()
        action.recover = lambda row, rp, progress: 1 / 0
        eng = self.engine(m1, action)
        eng.request(self.inst, None, 'test')
        eng.wait(self.inst, 30)
        self.assertEqual('failed', self.db.list_recoveries(
            self.inst)[0].state)
        self.assertEqual(dict(replica_counters.zeros(), recoveries_failed=1),
                         m1.counters.snapshot())

    def test_a_restarted_manager_resumes_at_once(self):
        self.conf.set_override('lease_duration', 600.0,
                               group='manager_cluster')
        m1 = self.replica('m1')
        crashed = StepAction()
        self.engine(m1, crashed).request(self.inst, None, 'test')
        self.assertTrue(crashed.started.wait(30))
        # The same host's manager starts again (the first died without
        # releasing anything): the 600 s lease of its earlier
        # incarnation is released at registration.
        again = StepAction()
        again.gate.set()
        eng = self.engine(self.replica('m1'), again)
        self.assertEqual(1, eng.takeover())
        eng.wait(self.inst, 30)
        self.assertEqual(['step-1'], again.previous)
        self.assertEqual('protected', self.db.get_instance(self.inst).status)
        crashed.gate.set()
        self.assertEqual(0, crashed.finished)


def _renew_fails_for(manager_id):
    real = db_membership.Records.renew_lease

    def renew(self, held, duration):
        if held.owner == manager_id:
            raise exception.DatabaseBusy(reason='the database is away')
        return real(self, held, duration)
    return renew
