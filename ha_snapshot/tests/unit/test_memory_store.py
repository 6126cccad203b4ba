"""Memory states in the store and through the agent: stored as chunks of
the point's scope (deduplicated), committed only once whole, removed with
their point, kept by gc; the agent ships only what the store lacks, and a
restart resumes only a state of the same configuration."""

import base64
import os

from ha_snapshot.agent import memory as agent_memory
from ha_snapshot.agent import state as state_mod
from ha_snapshot import exception
from ha_snapshot import importer
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot import memory_state as ms
from ha_snapshot import protection_spec
from ha_snapshot.storage import memory
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import test_memory_state as streams

MiB = 1 << 20


def spool_of(test, data: bytes, config=None) -> tuple:
    path = test.path('s-%s.hsm' % base.new_uuid())
    w = ms.SpoolWriter(path)
    w.write(data)
    return path, w.finish(config or {'m': '256'})


class FakeManager:
    """The manager's memory methods over a real store (no bus)."""

    def __init__(self, store, instance):
        self.store = store
        self.instance = instance
        self.calls = []

    def _rp(self, rp_id):
        for inst in self.store.instances():
            for rp in self.store.restore_points(inst):
                if rp.id == rp_id:
                    return rp
        raise exception.RestorePointNotFound(instance='?',
                                             restore_point=rp_id)

    def can_memory_state(self):
        return True

    def memory_chunks_missing(self, instance, rp_id, shas):
        self.calls.append(('missing', len(shas)))
        return memory.missing(self.store, self._rp(rp_id), shas)

    def put_memory_chunks(self, instance, rp_id, chunks):
        self.calls.append(('put', len(chunks)))
        return memory.put_chunks(self.store, self._rp(rp_id), [
            (sha, n, base64.b64decode(text)) for sha, n, text in chunks])

    def commit_memory_state(self, instance, rp_id, manifest):
        self.calls.append(('commit', rp_id))
        return memory.commit(self.store, self._rp(rp_id), manifest)

    def get_memory_state(self, instance, rp_id):
        return memory.get(self.store, self._rp(rp_id))

    def get_memory_chunk(self, instance, rp_id, index):
        state = memory.get(self.store, self._rp(rp_id))
        return base64.b64encode(memory.read_chunk(
            self.store, self._rp(rp_id), state, index)).decode()


class Owner:
    """What ship() needs of the snapshot agent."""

    def __init__(self, api, instance):
        self.manager_api = api
        self.instance = instance

    def _retry(self, what, func, *args, **kwargs):
        return func(*args, **kwargs)


class Queue:
    def __init__(self):
        import threading
        self.lock = threading.Lock()
        self.saved = 0

    def save(self):
        self.saved += 1


class MemoryStoreTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir)
        self.store = self.make_store(self.conf)
        self.inst = base.new_uuid()
        disk = self.path('d.raw')
        with open(disk, 'wb') as f:
            f.truncate(4 * MiB)
        # NOTE: two servers of one project: one dedup scope.
        self.rp1 = importer.import_file(self.conf, self.store, self.inst,
                                        disk, project='p')
        self.inst2 = base.new_uuid()
        self.rp2 = importer.import_file(self.conf, self.store, self.inst2,
                                        disk, project='p')
        self.api = FakeManager(self.store, self.inst)

    def ship(self, rp, data):
        spool, index = spool_of(self, data)
        entry = state_mod.Pending(sequence=1, disk='d', frozen='f',
                                  backing=None, committable=True,
                                  restore_point=rp.id, memory=spool)
        queue = Queue()
        sent = agent_memory.ship(Owner(self.api, self.inst), queue, entry)
        self.assertIsNone(entry.memory)
        self.assertFalse(os.path.exists(spool))
        self.assertEqual(1, queue.saved)
        return sent, index

    def test_shipped_state_reads_back_and_deduplicates(self):
        first = streams.stream(3000)
        sent1, index = self.ship(self.rp1, first)
        state = self.api.get_memory_state(self.inst, self.rp1.id)
        self.assertEqual(index.size, state['size'])
        got = b''.join(base64.b64decode(self.api.get_memory_chunk(
            self.inst, self.rp1.id, i)) for i in range(len(state['chunks'])))
        self.assertEqual(first, got)
        # A second state with two pages changed sends only their chunks.
        second = streams.stream(3000, changed={10, 2000})
        sent2, _ = self.ship(self.rp2, second)
        self.assertGreater(sent1, 0)
        self.assertLess(sent2, sent1 / 4)

    def test_manager_reads_a_state_once_for_its_chunks(self):
        # NOTE: a restore asks for hundreds of chunks, one call each.
        first = streams.stream(3000)
        self.ship(self.rp1, first)
        mgr = manager_mod.Manager(self.conf, self.store, None, None)
        reads = []
        real = self.store.get_restore_point

        def counted(*args, **kwargs):
            reads.append(args)
            return real(*args, **kwargs)
        self.patch(self.store, 'get_restore_point', counted)
        state = mgr.get_memory_state(self.inst, self.rp1.id)
        got = b''.join(base64.b64decode(mgr.get_memory_chunk(
            self.inst, self.rp1.id, i)) for i in range(len(state['chunks'])))
        self.assertEqual(first, got)
        self.assertGreater(len(state['chunks']), 1)
        self.assertEqual(1, len(reads))
        # A point without memory answers None, and no chunk.
        self.assertIsNone(mgr.get_memory_state(self.inst2, self.rp2.id))
        self.assertRaises(exception.InvalidMemoryState,
                          mgr.get_memory_chunk, self.inst2, self.rp2.id, 0)

    def test_commit_needs_every_chunk(self):
        spool, index = spool_of(self, streams.stream(500))
        e = self.assertRaises(exception.InvalidMemoryState, memory.commit,
                              self.store, self.rp1, index.manifest())
        self.assertIn('not stored', str(e))
        self.assertIsNone(memory.get(self.store, self.rp1))
        bad = dict(index.manifest(), size=1)
        self.assertRaises(exception.InvalidMemoryState, memory.commit,
                          self.store, self.rp1, bad)

    def test_a_lying_chunk_is_refused(self):
        spool, index = spool_of(self, streams.stream(500))
        ref = index.chunks[0]
        with open(spool, 'rb') as f:
            frame = ms.read_frame(f, ref)
        e = self.assertRaises(exception.InvalidMemoryState,
                              memory.put_chunks, self.store, self.rp1,
                              [('0' * 64, ref.length, frame)])
        self.assertIn('sha256', str(e))

    def test_retention_and_gc(self):
        self.ship(self.rp1, streams.stream(800, seed=1))
        self.ship(self.rp2, streams.stream(800, seed=2))
        self.store.clock = lambda: 4e9  # NOTE: everything past the grace
        self.store.gc()
        # Both states are whole after gc: their chunks count.
        for rp in (self.rp1, self.rp2):
            state = memory.get(self.store, rp)
            for i in range(len(state['chunks'])):
                memory.read_chunk(self.store, rp, state, i)
        # Retention removing a point removes its state.
        class KeepNone:
            def keep(self, points, now):
                return set()
        self.store.policy = KeepNone()
        self.store.apply_retention(self.inst)
        self.assertEqual([], list(self.store.driver.list(
            memory.prefix(self.inst))))
        self.assertIsNotNone(memory.get(self.store, self.rp2))


class ResumeChoiceTest(base.TestCase):

    class Api:
        def __init__(self, state):
            self.state = state

        def get_memory_state(self, instance, rp):
            return self.state

    class Driver:
        class opts:
            binary = 'qemu-system-x86_64'

        def __init__(self):
            self.resumed = []

        def resume(self, spec, chunks, timeout):
            self.resumed.append(spec)
            raise AssertionError('not to be resumed')

    def spec(self, memory_mb=256):
        from ha_snapshot.hypervisor import base as hv_base
        return hv_base.VMSpec(
            name='vm', disks=(hv_base.DiskSpec('/d.qcow2', node='disk0',
                                               device='vd0'),),
            qmp_path='/q', log_path='/l', machine='q35',
            memory_mb=memory_mb)

    def test_other_configuration_boots(self):
        from ha_snapshot.hypervisor import process
        saved = ms.config_of(process.command_line('q', self.spec(512)))
        fetched = []
        driver = self.Driver()
        vm, info = agent_memory.resume(
            base.make_conf(self.store_dir), driver,
            self.Api({'config': saved, 'chunks': []}), 'i', 'rp',
            self.spec(256), lambda: fetched.append(1))
        self.assertIsNone(vm)
        self.assertEqual([], fetched)
        self.assertEqual([], driver.resumed)
        self.assertFalse(info['memory_state_restored'])
        self.assertIn("m was '512', now '256'", info['memory_state_error'])

    def test_no_state_boots(self):
        conf = base.make_conf(self.store_dir)
        vm, info = agent_memory.resume(conf, self.Driver(), self.Api(None),
                                       'i', 'rp', self.spec(), None)
        self.assertIsNone(vm)
        self.assertNotIn('memory_state_error', info)


class MemoryDueTest(base.TestCase):

    def saver(self, interval, clock):
        conf = base.make_conf(self.store_dir)
        from ha_snapshot.conf import agent as agent_conf
        agent_conf.register_opts(conf)
        conf.set_override('memory_interval', interval, group='agent')

        class Driver:
            def snapshot_with_memory(self):
                pass
        return agent_memory.MemorySaver(conf, Driver(), clock=clock)

    def spec(self, **kw):
        return protection_spec.ProtectionSpec.from_dict(dict(
            {'vm': {'machine': 'q35'}}, **kw))

    def test_interval_and_spec(self):
        now = [100.0]
        saver = self.saver(0, lambda: now[0])
        self.assertFalse(saver.due(self.spec()))
        self.assertTrue(saver.due(self.spec(memory='always')))
        saver = self.saver(30, lambda: now[0])
        self.assertTrue(saver.due(self.spec()))
        saver._last = now[0]
        now[0] += 10
        self.assertFalse(saver.due(self.spec()))
        now[0] += 25
        self.assertTrue(saver.due(self.spec()))
        self.assertFalse(saver.due(self.spec(memory='never')))
        # A VM without a machine, or no way to start it again: never.
        self.assertFalse(saver.due(protection_spec.ProtectionSpec.from_dict(
            {'vm': {'machine': 'none'}})))
        self.assertFalse(saver.due(protection_spec.ProtectionSpec()))
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              self.spec, memory='sometimes')
        self.assertIn("'memory'", str(e))
