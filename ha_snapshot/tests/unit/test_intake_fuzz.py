"""Fuzz of the manager's delta intake: random part and commit sequences.

The real Manager with a real file store and sqlite database, driven the
way the RPC endpoint drives it. Whatever arrives (parts of zero extents
only, data parts, corrupt parts, parts of many deltas, commits with a
spoiled header or of missing parts, sweeps), memory held never grows past
the configured bound (the spool's own count, and tracemalloc), and once
every delta is committed, refused or abandoned, the store holds only the
chunks its restore points reference and the spool holds nothing.
"""

import hashlib
import json
import os
import tracemalloc

import hypothesis
from hypothesis import strategies as st

from ha_snapshot import codec
from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot import exception
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot.manager import spool as spool_mod
from ha_snapshot.tests import base

KiB = base.KiB
MiB = base.MiB
CHUNK = 64 * KiB
PART = 64 * KiB
DISK = 4 * MiB
MEMORY = 512 * KiB
# NOTE: besides what the spool counts: the chunk writes queued ahead of a
# merge (their bytes, also held by the spool or already pushed out) and
# the database's and the store's own caches.
SLACK = 4 * MiB

seqs = st.integers(0, 3)
data_part = st.tuples(st.just('data'), seqs, st.integers(0, 3),
                      st.integers(0, DISK // CHUNK - 1),
                      st.integers(1, PART // CHUNK), st.integers(0, 255))
zero_parts = st.tuples(st.just('zeros'), seqs, st.integers(1, 12),
                       st.integers(16, 2048))
bad_part = st.tuples(st.just('corrupt'), seqs, st.integers(0, 3))
commit = st.tuples(st.just('commit'), seqs,
                   st.sampled_from(['good', 'project', 'size', 'parent',
                                    'count', 'version']))
sweep = st.tuples(st.just('sweep'))
ops = st.lists(st.one_of(data_part, zero_parts, bad_part, commit, sweep),
               min_size=1, max_size=25)


class IntakeFuzzTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(
            self.store_dir, storage__chunk_size=CHUNK,
            image__max_part_bytes=PART, image__max_part_extents=2048)
        self.conf.set_override('connection', 'sqlite:///' + self.path(
            'db.sqlite'), group='database')
        self.db = db_api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(self.conf, database=self.db)
        self.examples = 0

    def manager(self):
        """A fresh manager, store and spool for one example."""
        self.examples += 1
        root = self.path('ex%d' % self.examples)
        self.store_dir = os.path.join(root, 'store')
        self.conf.set_override('backend_url', 'file://' + self.store_dir,
                               group='storage')
        self.now = 1000.0
        self.spool = spool_mod.Spool(
            os.path.join(root, 'spool'), PART, 2048, memory_bytes=MEMORY,
            max_delta_parts=64, max_deltas_per_instance=3, max_age=600,
            clock=lambda: self.now)
        self.store = self.make_store(self.conf)
        mgr = manager_mod.Manager(self.conf, self.store, self.db, self.spool)
        self.inst = base.new_uuid()
        mgr.register_instance(self.inst, 'p1', 'host1', 'qemu', {})
        return mgr

    def part(self, seq, index, extents, payload=b''):
        return {'instance': self.inst, 'sequence': seq, 'index': index,
                'extents': extents, 'raw_size': len(payload),
                'sha256': hashlib.sha256(payload).hexdigest(),
                'compression': 'none',
                'payload': codec.b64encode(payload)}

    def header(self, seq, parts, parent, spoil):
        changed = sum(n for p in parts for _o, n, _k in p['extents'])
        h = {'instance': self.inst, 'project': 'p1', 'sequence': seq,
             'parent': parent, 'virtual_size': DISK, 'cluster_size': CHUNK,
             'part_count': len(parts), 'changed_bytes': changed,
             'data_bytes': sum(p['raw_size'] for p in parts),
             'full': parent is None}
        if spoil == 'project':
            h['project'] = 'p2'
        elif spoil == 'size':
            h['virtual_size'] = DISK // 2
        elif spoil == 'parent':
            h['parent'] = base.new_uuid()
        elif spoil == 'count':
            h['part_count'] += 1
        elif spoil == 'version':
            h['format_version'] = 99
        return h

    def run_ops(self, mgr, steps):
        sent = {}  # NOTE: seq -> {index: part} as the manager took them
        parent = None
        for step in steps:
            kind = step[0]
            try:
                if kind == 'data':
                    _k, seq, index, first, n, fill = step
                    # NOTE: parts of one delta go up the disk in order.
                    offset = min(first, DISK // CHUNK - n) * CHUNK
                    payload = bytes([fill or 1]) * (n * CHUNK)
                    part = self.part(seq, index, [[offset, n * CHUNK,
                                                   'data']], payload)
                    mgr.put_part(self.inst, seq, json.loads(json.dumps(
                        part)))
                    sent.setdefault(seq, {})[index] = part
                elif kind == 'zeros':
                    _k, seq, count, extents = step
                    for index in range(count):
                        part = self.part(seq, index, [
                            [(index * extents + k) * 2 * 512, 512, 'zero']
                            for k in range(extents)])
                        mgr.put_part(self.inst, seq, part)
                        sent.setdefault(seq, {})[index] = part
                elif kind == 'corrupt':
                    _k, seq, index = step
                    part = self.part(seq, index, [[0, CHUNK, 'data']],
                                     b'\x01' * CHUNK)
                    part['sha256'] = '0' * 64
                    self.assertRaises(exception.InvalidDelta, mgr.put_part,
                                      self.inst, seq, part)
                elif kind == 'commit':
                    _k, seq, spoil = step
                    held = sent.get(seq, {})
                    parts = [held[i] for i in sorted(held)]
                    ack = mgr.commit_delta(self.header(seq, parts, parent,
                                                       spoil))
                    parent = ack['restore_point']
                    for old in [s for s in sent if s <= seq]:
                        del sent[old]
                else:
                    self.now += 601
                    mgr.sweep()
                    sent.clear()
            except (exception.InvalidDelta, exception.InstanceNotFound):
                if kind == 'commit':
                    sent.pop(step[1], None)
            except exception.DeltaDeferred:
                pass  # NOTE: too many deltas held: the agent waits
            self.check_memory()

    def check_memory(self):
        self.assertLessEqual(self.spool.held_bytes, MEMORY)
        grown = tracemalloc.get_traced_memory()[0] - self.base_memory
        self.assertLess(grown, MEMORY + SLACK, grown)

    def check_nothing_left(self, mgr):
        # NOTE: every delta left uncommitted is abandoned by its agent.
        self.now += 601
        mgr.sweep()
        referenced = {sha for rp in self.store.restore_points(self.inst)
                      for sha in rp.chunks.values()}
        stored = {n for _d, _s, names in os.walk(
            os.path.join(self.store_dir, 'chunks')) for n in names}
        self.assertEqual(referenced, stored)
        self.assertEqual([], [n for _d, _s, names in os.walk(
            self.spool.root) for n in names])
        self.assertEqual((0, {}), (self.spool.held_bytes,
                                   self.spool.deltas()))
        self.assertEqual(0, len(mgr.prestores))

    @hypothesis.settings(derandomize=True, max_examples=30, deadline=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(steps=ops)
    def test_intake(self, steps):
        mgr = self.manager()
        tracemalloc.start()
        try:
            self.base_memory = tracemalloc.get_traced_memory()[0]
            self.run_ops(mgr, steps)
        finally:
            tracemalloc.stop()
        base.wait_for(lambda: len(mgr.prestores) == 0, 30,
                      'chunk writes started ahead to end')
        self.check_nothing_left(mgr)
