"""Every writable disk in one delta (issue 14 item 1): the layout's
checks, the header and manifest on the wire and in the store (with and
without a layout), a real two-disk delta merged and cut in disks again,
the agent's queue entries and state files, and the RPC compatibility
with managers and agents before 1.5."""

import copy
import json
import os

from ha_snapshot.agent import disks as disks_mod
from ha_snapshot.agent import restart_disks
from ha_snapshot.agent import shipper as shipper_mod
from ha_snapshot.agent import state as state_mod
from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
from ha_snapshot import disk_layout
from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.manager import rpcapi
from ha_snapshot import protection_spec
from ha_snapshot.storage import objects
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import test_manager_routing_client as routing

MiB = base.MiB
G = disk_layout.ALIGN
GOOD = [{'target': 'vda', 'role': 'root', 'offset': 0, 'size': 3 * MiB},
        {'target': 'vdb', 'role': 'ephemeral', 'offset': G,
         'size': 2 * MiB + 65536}]
GOOD_SIZE = G + 2 * MiB + 65536


def _with(index, **changes):
    layout = copy.deepcopy(GOOD)
    layout[index].update(changes)
    return layout


class LayoutCheckTest(base.TestCase):
    """Each bad layout is refused by a message naming what is wrong."""

    BAD = [
        ([], 'non-empty list'),
        ({'vda': 1}, 'non-empty list'),
        (['vda'], 'disks[0] must be an object'),
        ([dict(GOOD[0], extra=1), GOOD[1]], 'exactly the keys'),
        (_with(1, target='../etc'), "target '../etc' is not a disk name"),
        (_with(1, target='x' * 40), 'is not a disk name'),
        (_with(1, target='vda'), 'target vda is listed twice'),
        (_with(1, role='scratch'), "role 'scratch' is not one of"),
        (_with(1, role='root'), 'the root disk, and it only, comes first'),
        (_with(0, role='ephemeral'), 'the root disk, and it only'),
        (_with(1, offset=G // 2), 'is not a multiple of'),
        (_with(1, offset=-G), 'offset must be an integer >= 0'),
        (_with(1, size=0), 'size must be an integer >= 1'),
        (_with(1, size=True), 'size must be an integer'),
        (_with(0, size=G + 1), 'overlaps the disk before it'),
        (list(reversed(GOOD)), 'comes first'),
    ]

    def test_good_layout(self):
        self.assertIsNone(disk_layout.check(GOOD, GOOD_SIZE))
        self.assertEqual(GOOD, disk_layout.plan(
            [('vda', 'root', 3 * MiB), ('vdb', 'ephemeral',
                                        2 * MiB + 65536)]))

    def test_bad_layouts_named(self):
        for layout, said in self.BAD:
            reason = disk_layout.check(layout, GOOD_SIZE)
            self.assertIsNotNone(reason, layout)
            self.assertIn(said, reason, layout)

    def test_size_must_end_at_the_last_disk(self):
        self.assertIn('the last disk ends at',
                      disk_layout.check(GOOD, GOOD_SIZE + 1))

    def test_too_many_disks(self):
        layout = disk_layout.plan([('root0', 'root', MiB)] + [
            ('d%d' % i, 'ephemeral', MiB) for i in range(30)])
        self.assertIn('at most 26', disk_layout.check(
            layout, disk_layout.total_size(layout)))

    def header(self, **kw):
        args = dict(instance=base.new_uuid(), project='p', sequence=1,
                    parent=None, virtual_size=GOOD_SIZE, cluster_size=65536,
                    part_count=0, changed_bytes=0, data_bytes=0,
                    disks=copy.deepcopy(GOOD))
        args.update(kw)
        return delta_mod.DeltaHeader(**args)

    def test_validate_header_names_the_bad_layout(self):
        delta_mod.validate_header(self.header(), 1 << 40)
        e = self.assertRaises(
            exception.InvalidDelta, delta_mod.validate_header,
            self.header(disks=_with(1, role='scratch')), 1 << 40)
        self.assertIn("bad disk layout: disks[1] (vdb): role 'scratch'",
                      str(e))

    def test_header_wire_with_and_without_layout(self):
        old = delta_mod.header_to_primitive(self.header(disks=None,
                                                        virtual_size=MiB))
        # NOTE: as agents before RPC 1.5 send it, and managers before it
        # take it: no 'disks' key at all.
        self.assertNotIn('disks', old)
        self.assertIsNone(delta_mod.header_from_primitive(old).disks)
        new = json.loads(json.dumps(
            delta_mod.header_to_primitive(self.header())))
        self.assertEqual(GOOD, delta_mod.header_from_primitive(new).disks)


class TwoDiskDeltaTest(base.TestCase):
    """A real two-disk delta, merged in a real store and cut again."""

    def setUp(self):
        super().setUp()
        self.store = self.make_store()
        self.inst = base.new_uuid()
        self.root = self.make_qcow2('root.qcow2', 3 * MiB,
                                    'write -P 0xa1 0 1M',
                                    'write -P 0xa2 2M 1M')
        self.data = self.make_qcow2('data.qcow2', 2 * MiB + 65536,
                                    'write -P 0xb1 64k 1M',
                                    'write -P 0xb2 2M 64k')

    def delta(self, paths, layout, parent=None, sequence=0, full=False):
        infos = [image_inspect.inspect(p, 'qcow2', max_virtual_size=1 << 40)
                 for p in paths]
        return delta_images.from_images(
            infos, layout, instance=self.inst, project='p',
            sequence=sequence, parent=parent, max_part_bytes=MiB,
            max_part_extents=64, full=full)

    def wire(self, delta):
        return delta_mod.Delta.from_primitive(
            json.loads(json.dumps(delta.to_primitive())))

    def test_merged_and_cut_in_disks(self):
        d = self.delta([self.root, self.data], GOOD)
        self.assertEqual(GOOD_SIZE, d.header.virtual_size)
        offsets = [e[0] for p in d.parts() for e in p.extents]
        self.assertIn(G + 65536, offsets)
        rp = self.store.merge(self.wire(d))
        self.assertEqual(GOOD, rp.disks)
        again = self.store.get_restore_point(self.inst, rp.id)
        self.assertEqual(GOOD, again.disks)
        out = self.path('all.raw')
        self.store.export(self.inst, out, rp_id=rp.id)
        with open(out, 'rb') as f:
            f.seek(0)
            self.assertEqual(b'\xa1' * MiB, f.read(MiB))
            f.seek(2 * MiB)
            self.assertEqual(b'\xa2' * MiB, f.read(MiB))
            f.seek(G + 65536)
            self.assertEqual(b'\xb1' * MiB, f.read(MiB))
            f.seek(G + 2 * MiB)
            self.assertEqual(b'\xb2' * 65536, f.read(65536))
        # The second disk's manifest: its own chunks, numbered from 0.
        manifest = {'id': rp.id, 'chunk_size': rp.chunk_size,
                    'virtual_size': rp.virtual_size, 'disks': rp.disks,
                    'chunks': {str(k): v for k, v in rp.chunks.items()}}
        sub = disk_layout.disk_manifest(manifest, GOOD[1])
        self.assertEqual(G // rp.chunk_size, sub['first_chunk'])
        self.assertEqual(2 * MiB + 65536, sub['virtual_size'])
        self.assertEqual({str(i) for i in range(3)}, set(sub['chunks']))

    def test_one_disk_exported_alone(self):
        """export(disk=...): the root (as the rebuild uploads it to Glance)
        or another disk, each its own size; an unknown disk is named."""
        rp = self.store.merge(self.wire(self.delta([self.root, self.data],
                                                   GOOD)))
        for name, source, size in (('root', self.root, 3 * MiB),
                                   ('vda', self.root, 3 * MiB),
                                   ('vdb', self.data, 2 * MiB + 65536)):
            out = self.path('%s.raw' % name)
            self.store.export(self.inst, out, rp_id=rp.id, disk=name)
            self.assertEqual(size, os.path.getsize(out))
            self.assertTrue(base.same_image(out, base.flatten(
                source, self.path('%s-expected.raw' % name))), name)
        e = self.assertRaises(exception.HaSnapshotException,
                              self.store.export, self.inst,
                              self.path('x.raw'), rp_id=rp.id, disk='vdz')
        self.assertIn('disk vdz: the restore point holds vda (root), vdb '
                      '(ephemeral)', str(e))
        self.assertFalse(os.path.exists(self.path('x.raw')))
        # A root-only point: "root" is all of it; no other disk.
        single = self.store.merge(self.wire(self.delta(
            [self.root], None, parent=rp.id, sequence=1, full=True)))
        self.store.export(self.inst, self.path('s.raw'), rp_id=single.id,
                          disk='root')
        self.assertEqual(3 * MiB, os.path.getsize(self.path('s.raw')))
        self.assertRaises(exception.HaSnapshotException, self.store.export,
                          self.inst, self.path('y.raw'), rp_id=single.id,
                          disk='vdb')

    def test_layout_change_needs_a_full_delta(self):
        first = self.store.merge(self.wire(self.delta([self.root], None)))
        before = len(self.store.restore_points(self.inst))
        e = self.assertRaises(
            exception.InvalidDelta, self.store.merge,
            self.wire(self.delta([self.root, self.data], GOOD,
                                 parent=first.id, sequence=1)))
        self.assertIn('a change of disks needs a full delta', str(e))
        self.assertEqual(before, len(self.store.restore_points(self.inst)))
        rp = self.store.merge(self.wire(self.delta(
            [self.root, self.data], GOOD, parent=first.id, sequence=1,
            full=True)))
        self.assertEqual(GOOD, rp.disks)

    def test_bad_layout_refused_nothing_stored(self):
        d = self.wire(self.delta([self.root, self.data], GOOD))
        d.header.disks = _with(1, offset=G // 2)
        self.assertRaises(exception.InvalidDelta, self.store.merge, d)
        self.assertEqual([], self.store.restore_points(self.inst))
        self.assertEqual([], [n for _r, _d, names in os.walk(self.store_dir)
                              for n in names if len(n) == 64])


class ManifestTest(base.TestCase):

    def point(self, disks=None):
        return objects.RestorePoint(
            id=base.new_uuid(), instance=base.new_uuid(), project='p',
            scope='p-p', number=1, parent=None, created_at=1.0,
            virtual_size=GOOD_SIZE if disks else MiB, chunk_size=MiB,
            chunks={0: 'a' * 64}, delta_sequence=0, disks=disks)

    def test_round_trip_with_and_without_layout(self):
        for disks in (None, copy.deepcopy(GOOD)):
            rp = self.point(disks)
            again = objects.decode_manifest(rp.key, rp.encode())
            self.assertEqual(rp, again)
            self.assertEqual(disks, again.disks)
        doc = objects.decode_json(self.point().encode(), 1 << 20, 1)
        # NOTE: as manifests written before layouts existed.
        self.assertNotIn('disks', doc)

    def test_bad_layout_in_a_manifest_is_corrupt(self):
        rp = self.point(_with(1, role='scratch'))
        e = self.assertRaises(exception.CorruptObject,
                              objects.decode_manifest, rp.key, rp.encode())
        self.assertIn('bad disk layout', str(e))


def _fo(name, frozen, backing=None, owned=True, full=False):
    img = hv_base.Image(node='n-' + frozen, path=frozen, format='qcow2',
                        owned=owned)
    below = hv_base.Image(node='b-' + backing, path=backing,
                          format='qcow2') if backing else None
    return hv_base.FrozenOverlay(disk=name, frozen=img, backing=below,
                                 active=img, full=full)


class AgentEntryTest(base.TestCase):

    def snap(self, *fos):
        return hv_base.Snapshot(vm='v', disks=fos, qmp_seconds=0.0,
                                transaction_seconds=0.0, taken_at=0.0)

    def test_roles_swap_and_multi_off(self):
        spec = protection_spec.ProtectionSpec.from_dict(
            {'disk_roles': {'vdc': 'swap'}})
        snap = self.snap(_fo('vda', 'a1', 'a0'), _fo('vdb', 'b1', 'b0'),
                         _fo('vdc', 'c1', 'c0'))
        split = disks_mod.split(snap, 'vda', spec, multi=True)
        self.assertEqual([('vda', 'root'), ('vdb', 'ephemeral')],
                         [(fo.disk, r) for fo, r in split.protected])
        self.assertEqual(['vdc'], [fo.disk for fo in split.others])
        swap = spec.replace(protect_swap=True)
        self.assertEqual(3, len(disks_mod.split(snap, 'vda', swap,
                                                True).protected))
        off = disks_mod.split(snap, 'vda', spec, multi=False)
        self.assertEqual(['vda'], [fo.disk for fo, _ in off.protected])
        self.assertEqual(['vdb', 'vdc'], [fo.disk for fo in off.others])

    def test_bad_role_refused_by_name(self):
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              protection_spec.ProtectionSpec.from_dict,
                              {'disk_roles': {'vdb': 'scratch'}})
        self.assertIn("disk 'vdb' has role 'scratch'", str(e))

    def test_layout_change_sends_overlays_whole(self):
        protected = [(_fo('vda', 'a2', 'a1'), 'root'),
                     (_fo('vdb', 'b0', None, owned=False), 'ephemeral')]
        shape = [['vda', 'root', 10], ['vdb', 'ephemeral', 5]]
        fields = disks_mod.entry_fields(protected, shape, None)
        self.assertTrue(fields['full'])
        # NOTE: vdb's base holds it all; vda's overlay only its writes.
        self.assertEqual([True, False],
                         [d['whole'] for d in fields['disks']])
        same = disks_mod.entry_fields(
            [(_fo('vda', 'a3', 'a2'), 'root'),
             (_fo('vdb', 'b1', 'b0'), 'ephemeral')], shape, shape)
        self.assertFalse(same['full'])
        self.assertEqual([False, False],
                         [d['whole'] for d in same['disks']])
        single = disks_mod.entry_fields(
            [(_fo('vda', 'a3', 'a2'), 'root')], None, None)
        self.assertNotIn('disks', single)

    def test_adopted_overlays_grouped_by_snapshot(self):
        self.assertEqual([['a1', 'b1'], ['a2', 'b2']],
                         disks_mod.adopt_groups([['a1', 'a2', 'a3'],
                                                 ['b1', 'b2']]))


class AgentStateTest(base.TestCase):

    def test_state_file_from_before_loads(self):
        old = {'instance': base.new_uuid(), 'project': 'p',
               'spec': {'name': 'vm', 'disk': 'vd0'}, 'next_sequence': 4,
               'parent': base.new_uuid(),
               'pending': [{'sequence': 3, 'disk': 'vd0', 'frozen': '/f3',
                            'backing': '/f2', 'committable': True}],
               'status': 'protecting'}
        path = self.path('old', 'state.json')
        os.makedirs(os.path.dirname(path))
        with open(path, 'w') as f:
            json.dump(old, f)
        st = state_mod.InstanceState.load(path)
        self.assertIsNone(st.layout)
        entry = st.pending[0]
        self.assertIsNone(entry.disks)
        self.assertEqual([{'disk': 'vd0', 'role': 'root', 'frozen': '/f3',
                           'backing': '/f2', 'committable': True,
                           'whole': False}], entry.images())
        d = st.to_dict()
        self.assertNotIn('layout', d)
        self.assertNotIn('disks', d['pending'][0])

    def test_multi_disk_entry_round_trip_and_commit_chain(self):
        st = state_mod.InstanceState(instance=base.new_uuid(), project='p',
                                     spec={'name': 'vm'})
        q = state_mod.PendingQueue(st, self.path('s'))
        shape = [['vda', 'root', 10], ['vdb', 'ephemeral', 5]]
        for n in (1, 2):
            q.add(**disks_mod.entry_fields(
                [(_fo('vda', 'a%d' % n, 'a%d' % (n - 1)), 'root'),
                 (_fo('vdb', 'b%d' % n, 'b%d' % (n - 1)), 'ephemeral')],
                shape, shape))
        st.layout = shape
        q.save()
        again = state_mod.InstanceState.load(
            state_mod.InstanceState.path_for(self.path('s'), st.instance))
        self.assertEqual(shape, again.layout)
        self.assertEqual(st.pending, again.pending)
        # The first entry committed: the second stands on what it stood
        # on, on every disk.
        q.remove(st.pending[0])
        self.assertEqual(['a0', 'b0'], [d['backing']
                                        for d in st.pending[0].disks])
        self.assertEqual('a0', st.pending[0].backing)


class RestartDisksTest(base.TestCase):

    def test_disk_specs_keep_the_names(self):
        manifest = {'id': 'rp', 'chunk_size': MiB, 'virtual_size': GOOD_SIZE,
                    'chunks': {}, 'disks': GOOD}
        for machine, root, other in (
                ('q35', ('disk0', 'vda'), (None, 'vdb')),
                (None, ('vda', None), ('vdb', None))):
            vm = protection_spec.VMOptions(machine=machine,
                                           node='disk0' if machine else None)
            rd = restart_disks.RestartDisks(manifest, '/w', 'rp', vm)
            specs = rd.specs('/w/root.qcow2')
            self.assertEqual([root, other],
                             [(s.node, s.device) for s in specs])
            self.assertEqual(['/w/root.qcow2', '/w/restored-rp-vdb.qcow2'],
                             [s.path for s in specs])
            self.assertEqual('vda', rd.root_name)
        single = restart_disks.RestartDisks(
            dict(manifest, disks=None), '/w', 'rp',
            protection_spec.VMOptions(node='n', device='d'))
        self.assertEqual([('n', 'd')], [(s.node, s.device)
                                        for s in single.specs('/w/r')])
        self.assertIsNone(single.root_name)
        self.assertIsNone(single.shape)


class CompatibilityTest(base.TestCase):
    """A multi-disk delta goes at RPC 1.5 only; a single-disk header goes
    as before (no 'disks' key) to a manager of 1.3 (the test replicas)."""

    def setUp(self):
        super().setUp()
        routing.start_replicas(self, ('m1', 'm2'))

    def header(self, disks=None):
        h = {'instance': routing.INSTANCE, 'sequence': 1}
        if disks is not None:
            h['disks'] = disks
        return h

    def test_single_disk_header_unchanged_for_old_managers(self):
        self.api.register_instance(routing.INSTANCE, 'p1', 'c1', 'qemu', {})
        self.api.commit_delta(self.header())
        self.assertNotIn('disks', self.replicas['m2'].headers[-1])

    def test_multi_disk_needs_1_5(self):
        capped = rpcapi.ManagerAPI(self.transport, timeout=5,
                                   version_cap='1.4')
        self.assertFalse(capped.can_multi_disk())
        self.assertTrue(self.api.can_multi_disk())
        e = self.assertRaises(exception.HaSnapshotException,
                              capped.commit_delta, self.header(GOOD))
        self.assertIn('needs a manager of RPC API 1.5', str(e))
        self.assertEqual([], [r.taken for r in self.replicas.values()
                              if r.taken])


class _Owner:
    """What the shipper reads of its snapshot agent to build a delta: the
    configuration and the driver's view of the disks' chains."""

    def __init__(self, conf, chains):
        self.conf = conf
        self.vm = object()
        self.driver = self
        self._chains = chains

    def disks(self, vm):
        return [hv_base.Disk(name=name, device=None, virtual_size=0,
                             chain=tuple(hv_base.Image(
                                 node='n%d' % i, path=p, format='qcow2',
                                 owned=i == 0) for i, p in enumerate(chain)))
                for name, chain in self._chains.items()]


class RebaselineTest(base.TestCase):
    """A change of disks sends every disk whole: a disk whose frozen image
    is an overlay is read through its chain (real qemu-img, real store)."""

    def test_overlays_sent_whole(self):
        conf = base.make_conf(self.store_dir)
        conf.set_override('state_dir', self.path('state'), group='agent')
        store = self.make_store(conf)
        inst = base.new_uuid()
        root_base = self.make_qcow2('root.qcow2', 3 * MiB,
                                    'write -P 0xa1 0 2M')
        root_top = base.new_overlay(self.path('root-1.qcow2'), root_base)
        base.qemu_io(root_top, 'write -P 0xa2 1M 64k')
        data_base = self.make_qcow2('data.qcow2', 2 * MiB,
                                    'write -P 0xb1 0 1M')
        # The parent: the root alone (before the second disk was
        # protected).
        parent = store.merge(delta_images.from_image(
            image_inspect.inspect(root_base, 'qcow2',
                                  max_virtual_size=1 << 40),
            instance=inst, project='p', sequence=0, parent=None,
            max_part_bytes=MiB, max_part_extents=64))
        st = state_mod.InstanceState(instance=inst, project='p',
                                     spec={'name': 'vm'}, parent=parent.id)
        q = state_mod.PendingQueue(st, self.path('state'))
        shape = [['vda', 'root', 3 * MiB], ['vdb', 'ephemeral', 2 * MiB]]
        entry = q.add(**disks_mod.entry_fields(
            [(_fo('vda', root_top, root_base), 'root'),
             (_fo('vdb', data_base, None, owned=False), 'ephemeral')],
            shape, None))
        self.assertEqual([True, False], [d['whole'] for d in entry.disks])
        q.fix_parent(entry)
        owner = _Owner(conf, {'vda': [root_top, root_base],
                              'vdb': [data_base]})
        shipper = shipper_mod.Shipper(owner, q, shipper_mod.Durable())
        tmp = self.path('state', 'whole')
        os.makedirs(tmp)
        delta = shipper.build(entry, tmp)
        self.assertTrue(delta.header.full)
        rp = store.merge(delta_mod.Delta.from_primitive(json.loads(
            json.dumps(delta.to_primitive()))))
        self.assertEqual(['vda', 'vdb'], [d['target'] for d in rp.disks])
        out = self.path('out.raw')
        store.export(inst, out, rp_id=rp.id)
        with open(out, 'rb') as f:
            root = f.read(3 * MiB)
            f.seek(G)
            data = f.read(2 * MiB)
        # vda whole: its base under the overlay's write; vdb: its base.
        self.assertEqual(b'\xa1' * MiB + b'\xa2' * 65536
                         + b'\xa1' * (MiB - 65536) + b'\0' * MiB, root)
        self.assertEqual(b'\xb1' * MiB + b'\0' * MiB, data)
