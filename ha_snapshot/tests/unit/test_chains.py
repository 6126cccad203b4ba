"""Property: every restore point exports identical to its chain's view.

Hypothesis draws chains of qcow2 overlays with aligned and unaligned
writes, zero writes, discards, writes to the last cluster of the disk and
empty overlays; each overlay is imported in turn, and after every import
every restore point so far is exported and compared (``qemu-img compare``)
with the raw view of the chain at that point.
"""

import os
import shutil
import tempfile

from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st

from ha_snapshot import importer
from ha_snapshot.tests import base

KiB = base.KiB
MiB = base.MiB
# An odd size: the last chunk (256 KiB chunks) and last cluster are partial.
DISK = 3 * MiB + 64 * KiB + 512
SECTOR = 512


@st.composite
def operation(draw):
    kind = draw(st.sampled_from(['write', 'write', 'zero', 'discard',
                                 'tail']))
    if kind == 'tail':
        length = draw(st.integers(1, 8)) * SECTOR
        return ('write -P 0x%02x %d %d'
                % (draw(st.integers(1, 255)), DISK - length, length))
    aligned = draw(st.booleans())
    if aligned:
        unit = 64 * KiB
        start = draw(st.integers(0, DISK // unit - 1)) * unit
        length = draw(st.integers(1, 8)) * unit
    else:
        start = draw(st.integers(0, DISK // SECTOR - 1)) * SECTOR
        length = draw(st.integers(1, 700)) * SECTOR
    length = min(length, DISK - start)
    if kind == 'write':
        return 'write -P 0x%02x %d %d' % (draw(st.integers(1, 255)), start,
                                          length)
    if kind == 'zero':
        return 'write -z %d %d' % (start, length)
    return 'discard %d %d' % (start, length)


chains = st.lists(st.lists(operation(), max_size=5), min_size=1, max_size=4)


class ChainPropertyTestCase(base.TestCase):

    @settings(max_examples=int(os.environ.get('HA_SNAPSHOT_EXAMPLES', 25)),
              deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(baseline=st.lists(operation(), max_size=4), chain=chains)
    def test_every_restore_point_exports_identical(self, baseline, chain):
        work = tempfile.mkdtemp(dir=self.tmp)
        try:
            self._check_chain(work, baseline, chain)
        finally:
            shutil.rmtree(work)

    def _check_chain(self, work, baseline, chain):
        conf = base.make_conf(os.path.join(work, 'store'),
                              storage__chunk_size=256 * KiB,
                              image__max_part_bytes=256 * KiB)
        store = self.make_store(conf)
        inst = base.new_uuid()
        top = os.path.join(work, 'base.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', top, str(DISK))
        if baseline:
            base.qemu_io(top, *baseline)
        layers = [top] + [None] * len(chain)
        for i, ops in enumerate(chain, 1):
            layers[i] = base.new_overlay(
                os.path.join(work, 'o%d.qcow2' % i), layers[i - 1])
            if ops:
                base.qemu_io(layers[i], *ops)
        imported = []
        for i, layer in enumerate(layers):
            view = base.flatten(layer, os.path.join(work, 'v%d.raw' % i))
            rp = importer.import_file(conf, store, inst, layer)
            imported.append((rp.id, view))
            for rp_id, expect in imported:
                out = os.path.join(work, 'export.raw')
                store.export(inst, out, rp_id=rp_id)
                self.assertTrue(base.same_image(out, expect),
                                'restore point %s differs after %s'
                                % (rp_id, chain))
        self.assertEqual([], store.verify())
