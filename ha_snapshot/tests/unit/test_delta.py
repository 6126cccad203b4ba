"""Deltas: built from real overlays, validated on receipt."""

import base64
import copy
import hashlib
import io
import json
import random

import zstandard

from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.tests import base

MiB = base.MiB
LIMITS = dict(max_virtual_size=1 << 40, max_part_bytes=1 * MiB,
              max_part_extents=64)


class DeltaTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.instance = base.new_uuid()
        basef = self.make_qcow2('base.qcow2', 8 * MiB, 'write -P 0x11 0 8M')
        self.overlay = base.new_overlay(self.path('ov.qcow2'), basef)
        base.qemu_io(self.overlay, 'write -P 0x22 64k 3M',
                     'write -z 4M 128k', 'discard 6M 64k',
                     'write -P 0x33 7M 1M')
        self.info = image_inspect.inspect(
            self.overlay, 'qcow2', max_virtual_size=1 << 40,
            allow_backing=True)

    def build(self, parent=None, **kw):
        args = dict(instance=self.instance, project='p', sequence=3,
                    parent=parent or base.new_uuid(), max_part_bytes=MiB,
                    max_part_extents=64)
        args.update(kw)
        return delta_images.from_image(self.info, **args)

    def wire(self, delta):
        return json.loads(json.dumps(delta.to_primitive()))

    def test_own_ranges_only(self):
        d = self.build()
        h = d.header
        self.assertEqual(4 * MiB, h.data_bytes)
        self.assertEqual(4 * MiB + 128 * 1024 + 64 * 1024, h.changed_bytes)
        # 4 MiB of data in parts of at most 1 MiB.
        self.assertEqual(4, h.part_count)
        extents = [e for p in d.parts() for e in p.extents]
        self.assertEqual([(64 * 1024, MiB, 'data')], extents[:1])
        self.assertIn((4 * MiB, 128 * 1024, 'zero'), extents)
        self.assertIn((6 * MiB, 64 * 1024, 'zero'), extents)

    def test_round_trip_bytes(self):
        d = delta_mod.Delta.from_primitive(self.wire(self.build()))
        d.validate(**LIMITS)
        seen = {}
        for off, length, kind, data in d.iter_extents(
                max_part_bytes=MiB, max_part_extents=64):
            if kind == 'data':
                seen[off] = bytes(data)
        self.assertEqual(b'\x22' * MiB, seen[64 * 1024])
        self.assertEqual(b'\x33' * MiB, seen[7 * MiB])

    def test_taken_at_travels_in_the_header(self):
        d = delta_mod.Delta.from_primitive(self.wire(self.build(
            taken_at=1700000000.25)))
        d.validate(**LIMITS)
        self.assertEqual(1700000000.25, d.header.taken_at)
        # Headers of agents before it (no taken_at) are still read.
        prim = self.wire(self.build())
        del prim['header']['taken_at']
        d = delta_mod.Delta.from_primitive(prim)
        d.validate(**LIMITS)
        self.assertIsNone(d.header.taken_at)

    def test_incompressible_data_travels_as_is(self):
        """Data that does not shrink (random here) is sent uncompressed,
        so nobody decompresses it; compressible data stays compressed.
        Both decode to the same bytes on the other side."""
        noise = random.Random(7).randbytes(MiB)
        with open(self.path('noise.raw'), 'wb') as f:
            f.write(b'\x44' * MiB + noise)
        info = image_inspect.inspect(self.path('noise.raw'), 'raw',
                                     max_virtual_size=1 << 40)
        d = delta_images.from_image(info, instance=self.instance, project='p',
                                    sequence=0, parent=None,
                                    max_part_bytes=MiB,
                                    max_part_extents=64)
        parts = list(d.parts())
        self.assertEqual(['zstd', 'none'], [p.compression for p in parts])
        self.assertLess(len(parts[0].payload), MiB // 100)
        self.assertEqual(noise, parts[1].payload)
        wire = delta_mod.Delta.from_primitive(
            json.loads(json.dumps(d.to_primitive())))
        wire.validate(**LIMITS)
        got = {off: bytes(data) for off, _n, kind, data in wire.iter_extents(
            max_part_bytes=MiB, max_part_extents=64) if kind == 'data'}
        self.assertEqual({0: b'\x44' * MiB, MiB: noise}, got)

    def test_container_round_trip_and_truncation(self):
        d = self.build()
        buf = io.BytesIO()
        size = d.write_to(buf)
        blob = buf.getvalue()
        self.assertEqual(len(blob), size)
        # Framing costs a few hundred bytes, not a fraction of the data.
        payload = sum(len(p.payload) for p in d.parts())
        self.assertLess(size - payload, 2048)
        back = delta_mod.Delta.read_from(io.BytesIO(blob),
                                         max_part_bytes=MiB)
        back.validate(**LIMITS)
        back.verify()
        self.assertEqual(self.wire(d), self.wire(back))
        for bad in (blob[:-1], blob + b'x', b'XXXX' + blob[4:],
                    blob[:8] + b'\xff' + blob[9:]):
            self.assertRaises(exception.InvalidDelta,
                              delta_mod.Delta.read_from, io.BytesIO(bad),
                              max_part_bytes=MiB)

    def test_baseline_drops_zero_extents(self):
        d = self.build(parent=None)
        self.assertIsNotNone(d.header.parent)
        info = image_inspect.inspect(self.path('base.qcow2'), 'qcow2',
                                     max_virtual_size=1 << 40)
        d = delta_images.from_image(info, instance=self.instance, project='p',
                                    sequence=0, parent=None,
                                    max_part_bytes=MiB, max_part_extents=64)
        self.assertEqual(d.header.changed_bytes, d.header.data_bytes)
        self.assertEqual(8 * MiB, d.header.data_bytes)

    def assertRejected(self, prim, reason_part):
        def run():
            d = delta_mod.Delta.from_primitive(prim)
            d.validate(**LIMITS)
            d.verify()
        e = self.assertRaises(exception.InvalidDelta, run)
        self.assertIn(reason_part, str(e))
        return e

    def test_rejections(self):
        good = self.wire(self.build())
        cases = []

        def case(reason, mutate):
            prim = copy.deepcopy(good)
            mutate(prim)
            cases.append((reason, prim))

        case('overlaps', lambda p: p['parts'][1]['extents'].__setitem__(
            0, [0, MiB, 'data']))
        case('beyond the virtual size', lambda p: p['header'].__setitem__(
            'virtual_size', 4 * MiB))
        case('checksum mismatch', lambda p: p['parts'][0].__setitem__(
            'sha256', '0' * 64))
        case('raw_size says', lambda p: p['parts'][0].__setitem__(
            'raw_size', p['parts'][0]['raw_size'] - 1))
        case('payload holds 10 bytes', lambda p: p['parts'][0].__setitem__(
            'payload', base64.b64encode(zstandard.ZstdCompressor().compress(
                bytes(10))).decode()))
        case('header announces', lambda p: p['parts'].pop())
        case('out of order', lambda p: p['parts'].reverse())
        case('unsupported format version', lambda p: p['header'].__setitem__(
            'format_version', 99))
        case('belongs to', lambda p: p['parts'][0].__setitem__(
            'sequence', 4))
        case('unknown extent kind', lambda p: p['parts'][0]['extents'][0]
             .__setitem__(2, 'evil'))
        case('power of two', lambda p: p['header'].__setitem__(
            'cluster_size', 3000))
        case('header fields unknown', lambda p: p['header'].__setitem__(
            'x', 1))
        for bad in ('x', -1, True, 1e12):
            case('taken_at must be null or a time', lambda p, bad=bad:
                 p['header'].__setitem__('taken_at', bad))
        case('malformed part', lambda p: p['parts'][0].__setitem__(
            'payload', '!!notbase64'))
        case('exceed the part limit', lambda p: p['parts'][0].__setitem__(
            'raw_size', 2 * MiB))
        case('corrupt compressed payload', lambda p: p['parts'][0]
             .__setitem__('payload', base64.b64encode(b'\x28\xb5\x2f\xfd'
                                                      b'garbage').decode()))
        case('trailing data', lambda p: p['parts'][0].__setitem__(
            'payload', base64.b64encode(base64.b64decode(
                p['parts'][0]['payload']) + b'xx').decode()))
        for reason, prim in cases:
            self.assertRejected(prim, reason)

    def test_decompression_bomb_is_bounded(self):
        prim = self.wire(self.build())
        part = prim['parts'][0]
        # A frame that expands to 64 MiB, claiming to be 1 MiB of data.
        bomb = zstandard.ZstdCompressor().compress(bytes(64 * MiB))
        part['payload'] = base64.b64encode(bomb).decode()
        part['sha256'] = hashlib.sha256(bytes(part['raw_size'])).hexdigest()
        self.assertRejected(prim, 'decompresses to more than')

    def test_bad_instance_id(self):
        prim = self.wire(self.build())
        prim['header']['instance'] = '../../etc'
        self.assertRaises(exception.InvalidInstance,
                          delta_mod.Delta.from_primitive(prim).validate,
                          **LIMITS)

    def test_not_a_dict(self):
        self.assertRaises(exception.InvalidDelta,
                          delta_mod.Delta.from_primitive, {'header': 'x'})
        self.assertRaises(exception.InvalidDelta,
                          delta_mod.Delta.from_primitive,
                          {'header': self.wire(self.build())['header'],
                           'parts': 'x'})

    def test_plan_parts_bounds(self):
        exts = [delta_mod.ranges.Extent(0, 5 * MiB, 'data', 0),
                delta_mod.ranges.Extent(6 * MiB, 1, 'zero')]
        parts = delta_images.plan_parts(exts, 2 * MiB, 2)
        self.assertEqual([2 * MiB, 2 * MiB, MiB],
                         [sum(n for _, n, k, _ in p if k == 'data')
                          for p in parts])
        self.assertTrue(all(len(p) <= 2 for p in parts))
