"""The re-baseline of a rebuilt Nova server writes the restore point's
other disks back (ha_snapshot/agent/rebaseline_disks.py): a real
two-disk restore point in a real store, fetched chunk by chunk through
the manager's own get_manifest/get_chunk, written by real qemu-img over
a qcow2 disk on a raw backing file (Nova's ephemeral disk on ``_base``);
each refusal leaves the disk as it was."""

import hashlib
import json
import os

from ha_snapshot.agent import disks as disks_mod
from ha_snapshot.agent import rebaseline_disks
from ha_snapshot.agent import restore as restore_mod
from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
from ha_snapshot import disk_layout
from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot import protection_spec
from ha_snapshot.tests import base

MiB = base.MiB
ROOT_SIZE = 3 * MiB
DATA_SIZE = 2 * MiB + 65536


class Domain:
    """The driver's view of a stopped (or running) domain: its disks."""

    def __init__(self, disks, alive=False):
        self._disks = disks
        self.alive = alive

    def disks(self, vm):
        return [hv_base.Disk(name=name, device=None, virtual_size=size,
                             chain=(hv_base.Image(node=name, path=path,
                                                  format=fmt),))
                for name, path, fmt, size in self._disks]

    def is_alive(self, vm):
        return self.alive


class VM:
    name = 'dom1'


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


class PointTestCase(base.TestCase):
    """A two-disk restore point in a store, and a rebuilt domain's
    disks."""

    def setUp(self):
        super().setUp()
        store = self.make_store()
        self.api = manager_mod.Manager(self.conf, store, None, None)
        self.inst = base.new_uuid()
        root = self.make_qcow2('root.qcow2', ROOT_SIZE, 'write -P 0xa1 0 1M')
        # The point's ephemeral disk: data, and zeros where Nova's base
        # file below has a pattern (they must read as zeros).
        self.data = self.make_qcow2('data.qcow2', DATA_SIZE,
                                    'write -P 0xb1 64k 1M',
                                    'write -P 0xb2 2M 64k')
        layout = disk_layout.plan([('vda', 'root', ROOT_SIZE),
                                   ('vdb', 'ephemeral', DATA_SIZE)])
        infos = [image_inspect.inspect(p, 'qcow2', max_virtual_size=1 << 40)
                 for p in (root, self.data)]
        delta = delta_images.from_images(
            infos, layout, instance=self.inst, project='p', sequence=0,
            parent=None, max_part_bytes=MiB, max_part_extents=64)
        self.rp = store.merge(delta_mod.Delta.from_primitive(
            json.loads(json.dumps(delta.to_primitive())))).id
        self.single = store.merge(delta_mod.Delta.from_primitive(json.loads(
            json.dumps(delta_images.from_image(
                infos[0], instance=self.inst, project='p', sequence=1,
                parent=self.rp, max_part_bytes=MiB, max_part_extents=64,
                full=True).to_primitive())))).id
        # Nova's rebuilt server: a root from Glance, an empty ephemeral
        # disk on a file of _base (formatted: not zeros).
        self.base_file = self.path('_base', 'ephemeral_0_2')
        os.makedirs(os.path.dirname(self.base_file))
        with open(self.base_file, 'wb') as f:
            f.write(b'\x55' * DATA_SIZE)
        self.eph = base.new_overlay(self.path('disk.local'), self.base_file,
                                    backing_fmt='raw')
        self.fetched = []

    def fetch(self, manifest, path):
        self.fetched.append(manifest['virtual_size'])
        restore_mod.fetch(self.api, self.inst, manifest['id'], path,
                          manifest=manifest)

    def domain(self, eph_size=DATA_SIZE, alive=False, extra=()):
        return Domain([('vda', self.path('root.qcow2'), 'qcow2', ROOT_SIZE),
                       ('vdb', self.eph, 'qcow2', eph_size)] + list(extra),
                      alive=alive)

    def restore(self, driver, rp=None):
        rp = rp or self.rp
        return rebaseline_disks.restore(
            driver, VM(), rp, self.api.get_manifest(self.inst, rp),
            self.fetch, self.path('work'))



class RebaselineDisksTest(PointTestCase):

    def test_other_disk_written_byte_for_byte(self):
        before = _digest(self.base_file)
        self.assertEqual({'restored': ['vdb'], 'left': []},
                         self.restore(self.domain()))
        self.assertEqual([DATA_SIZE], self.fetched)
        # The guest's view of the file, through its backing, is the point's
        # disk; the file is still a qcow2 file on the same backing file,
        # which is left untouched.
        self.assertTrue(base.same_image(
            base.flatten(self.eph, self.path('eph.raw')),
            base.flatten(self.data, self.path('data.raw'))))
        info = json.loads(base.qemu_img('info', '--output=json', self.eph))
        self.assertEqual('qcow2', info['format'])
        self.assertEqual(self.base_file, info['backing-filename'])
        self.assertEqual(before, _digest(self.base_file))
        with open(self.path('eph.raw'), 'rb') as f:
            self.assertEqual(b'\0' * 65536, f.read(65536))
        self.assertEqual([], os.listdir(self.path('work')))

    def test_size_mismatch_refused_nothing_written(self):
        before = _digest(self.eph)
        e = self.assertRaises(exception.DiskRestoreRefused, self.restore,
                              self.domain(eph_size=DATA_SIZE + MiB))
        self.assertIn('disk vdb not restored from restore point %s'
                      % self.rp, str(e))
        self.assertIn("the domain's disk is %d bytes, the point's %d"
                      % (DATA_SIZE + MiB, DATA_SIZE), str(e))
        self.assertEqual(before, _digest(self.eph))
        self.assertEqual([], self.fetched)

    def test_disk_of_the_point_missing_from_the_domain_refused(self):
        driver = Domain([('vda', self.path('root.qcow2'), 'qcow2',
                          ROOT_SIZE)])
        e = self.assertRaises(exception.DiskRestoreRefused, self.restore,
                              driver)
        self.assertIn('disk vdb not restored', str(e))
        self.assertIn('the domain has no such disk (it has vda); its '
                      'ephemeral content cannot be given back', str(e))
        self.assertEqual([], self.fetched)

    def test_running_domain_refused(self):
        before = _digest(self.eph)
        e = self.assertRaises(exception.DiskRestoreRefused, self.restore,
                              self.domain(alive=True))
        self.assertIn('the domain runs', str(e))
        self.assertEqual(before, _digest(self.eph))
        self.assertEqual([], self.fetched)

    def test_raw_or_other_format_only(self):
        before = _digest(self.eph)
        driver = Domain([('vda', self.path('root.qcow2'), 'qcow2',
                          ROOT_SIZE), ('vdb', self.eph, 'vmdk', DATA_SIZE)])
        e = self.assertRaises(exception.DiskRestoreRefused, self.restore,
                              driver)
        self.assertIn('is vmdk; only qcow2 and raw are written', str(e))
        self.assertEqual(before, _digest(self.eph))

    def test_root_only_point_leaves_the_other_disks(self):
        """A point from before multi-disk deltas: nothing written, even in
        a running domain; the domain's other disk is named as left."""
        before = _digest(self.eph)
        self.assertEqual({'restored': [], 'left': ['vdb']},
                         self.restore(self.domain(alive=True),
                                      rp=self.single))
        self.assertEqual(before, _digest(self.eph))

    def test_a_disk_the_point_lacks_is_left(self):
        swap = self.make_qcow2('disk.swap', MiB)
        self.assertEqual({'restored': ['vdb'], 'left': ['vdc']},
                         self.restore(self.domain(extra=[
                             ('vdc', swap, 'qcow2', MiB)])))

    def test_raw_disk_written_in_place(self):
        raw = self.path('disk.raw')
        with open(raw, 'wb') as f:
            f.write(b'\x55' * DATA_SIZE)
        driver = Domain([('vda', self.path('root.qcow2'), 'qcow2',
                          ROOT_SIZE), ('vdb', raw, 'raw', DATA_SIZE)])
        self.assertEqual({'restored': ['vdb'], 'left': []},
                         self.restore(driver))
        self.assertEqual(DATA_SIZE, os.path.getsize(raw))
        self.assertTrue(base.same_image(raw, base.flatten(
            self.data, self.path('data.raw'))))


class NovaDisksTest(base.TestCase):
    """A Nova server's disks all ship (libvirt driver too), its swap disk
    only when protect_swap says so."""

    def disks(self):
        return Domain([('vda', '/i/disk', 'qcow2', 1),
                       ('vdb', '/i/disk.local', 'qcow2', 1),
                       ('vdc', '/i/disk.swap', 'qcow2', 1)]).disks(None)

    def test_swap_known_by_its_file_name(self):
        spec = protection_spec.ProtectionSpec(nova=True, uuid='u')
        roles = disks_mod.with_nova_roles(spec, self.disks())
        self.assertEqual({'vdc': 'swap'}, roles.disk_roles)
        self.assertEqual(['vda', 'vdb'], [
            fo.disk for fo, _ in disks_mod.split(
                _snap(), 'vda', roles, multi=True).protected])
        # The spec's own roles win; a VM of the qemu driver is not Nova's.
        named = spec.replace(disk_roles={'vdc': 'ephemeral'})
        self.assertEqual({'vdc': 'ephemeral'}, disks_mod.with_nova_roles(
            named, self.disks()).disk_roles)
        plain = protection_spec.ProtectionSpec(name='vm')
        self.assertIsNone(disks_mod.with_nova_roles(
            plain, self.disks()).disk_roles)

    def test_libvirt_ships_every_disk(self):
        conf = base.make_conf(self.store_dir)

        class Api:
            def __init__(self, able):
                self.able = able

            def can_multi_disk(self):
                return self.able
        nova = protection_spec.ProtectionSpec(nova=True, uuid='u')
        self.assertTrue(disks_mod.multi_disk(conf, nova, Api(True)))
        self.assertFalse(disks_mod.multi_disk(conf, nova, Api(False)))
        conf.set_override('multi_disk', False, group='agent')
        self.assertFalse(disks_mod.multi_disk(conf, nova, Api(True)))


def _snap():
    def fo(disk):
        img = hv_base.Image(node=disk + '1', path='/b/%s' % disk,
                            format='qcow2', owned=True)
        return hv_base.FrozenOverlay(disk=disk, frozen=img, backing=None,
                                     active=img, full=True)
    return hv_base.Snapshot(vm='v', disks=(fo('vda'), fo('vdb'), fo('vdc')),
                            qmp_seconds=0.0, transaction_seconds=0.0,
                            taken_at=0.0)


class ServiceRebaselineTest(PointTestCase):
    """The agent's rebaseline RPC refuses before change tracking starts:
    the domain is let go, its state (parent, layout) is as it was, and
    the disk is untouched."""

    class Driver(Domain):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = []

        def attach(self, name, *args, **kwargs):
            self.calls.append(('attach', name))
            return VM()

        def detach(self, vm):
            self.calls.append('detach')

        def start_tracking(self, vm):
            self.calls.append('start_tracking')
            return True

        def stop_tracking(self, vm):
            self.calls.append('stop_tracking')

    def test_running_domain_refused_state_kept(self):
        from ha_snapshot.agent import service as agent_service
        from ha_snapshot.agent import state as state_mod
        conf = base.make_conf(self.store_dir,
                              agent__state_dir=self.path('agent'),
                              agent__hypervisor='libvirt')
        driver = self.Driver(self.domain(alive=True)._disks, alive=True)
        svc = agent_service.AgentService(conf, driver=driver)
        svc.manager_api = self.api
        st = state_mod.InstanceState(
            instance=self.inst, project='p',
            spec={'nova': True, 'uuid': self.inst, 'domain': self.inst},
            parent='older')
        st.save(self.path('agent'))
        before = _digest(self.eph)
        e = self.assertRaises(exception.DiskRestoreRefused, svc.rebaseline,
                              self.inst, self.rp)
        self.assertIn('the domain runs', str(e))
        self.assertEqual([('attach', self.inst), 'detach'], driver.calls)
        self.assertEqual(before, _digest(self.eph))
        again = state_mod.InstanceState.load(
            state_mod.InstanceState.path_for(self.path('agent'), self.inst))
        self.assertEqual(('older', None), (again.parent, again.layout))
        self.assertEqual({}, svc.instances)
