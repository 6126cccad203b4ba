"""The per-server spec: checked where it arrives, the same JSON as before
on the bus and in the agent's state file."""

import json
import os

from ha_snapshot.agent import state as state_mod
from ha_snapshot import exception
from ha_snapshot import protection_spec
from ha_snapshot.tests import base

Spec = protection_spec.ProtectionSpec

# NOTE: what the QEMU-driver callers (the demo, the benchmarks, the
# functional tests) cast, and what the Nova hook casts.
QEMU = {'name': 'vm0', 'qmp_path': '/run/vm0.qmp', 'pid': 4242,
        'log_path': '/run/vm0.log', 'disk': 'disk0',
        'disk_path': '/var/lib/vm0.qcow2',
        'vm': {'machine': 'q35', 'paused': True, 'node': 'disk0',
               'device': 'vd0', 'accel': 'tcg', 'memory_mb': 64,
               'pidfile': '/run/vm0.pid'},
        'policy': 'fixed', 'qga_path': '/run/vm0.qga', 'driver': 'qemu'}
NOVA = {'nova': True, 'uuid': '6c1f3a52-0c43-4ad3-8a1e-5b7e1b8a5a10',
        'name': 'web-1'}

# NOTE: a state file as the agent before ProtectionSpec wrote it, after a
# restart recovery (disk set to null) and a policy change: byte for byte
# what json.dump(dataclasses.asdict(state)) gave.
OLD_STATE = {
    'instance': '0d4e6a1c-9a57-4d4b-9a0e-2b1f7c3d5e6f', 'project': 'p1',
    'spec': dict(QEMU, disk=None, pid=4343,
                 disk_path='/var/lib/ha/restored-rp1.qcow2'),
    'next_sequence': 7, 'parent': 'rp1', 'baseline_restore_point': None,
    'pending': [{'sequence': 6, 'disk': 'disk0', 'frozen': '/f/6.qcow2',
                 'backing': '/f/5.qcow2', 'committable': True,
                 'parent': 'rp1', 'restore_point': None,
                 'taken_at': 1700000000.5, 'full': False}],
    'status': 'protecting'}


class ProtectionSpecTest(base.TestCase):

    def test_round_trip_is_the_same_json(self):
        for data in (QEMU, NOVA, {}):
            spec = Spec.from_dict(data)
            self.assertEqual(data, spec.to_dict())
            self.assertEqual(spec, Spec.from_dict(
                json.loads(json.dumps(spec.to_dict()))))
        spec = Spec.from_dict(QEMU)
        self.assertEqual(4242, spec.pid)
        self.assertTrue(spec.vm.paused)
        self.assertEqual('vd0', spec.vm.device)

    def test_unset_keys_are_left_out(self):
        # NOTE: the Nova hook's cast, exactly as before the class existed.
        self.assertEqual({'nova': True, 'uuid': 'u', 'name': 'n'},
                         Spec(nova=True, uuid='u', name='n').to_dict())
        self.assertEqual({'name': 'x'},
                         Spec.from_dict({'name': 'x', 'disk': None})
                         .to_dict())

    def test_unknown_key_is_refused_by_name(self):
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              Spec.from_dict, dict(QEMU, qmp='/x'))
        self.assertIn("unknown key 'qmp' (known keys: disk, disk_path, "
                      "disk_roles, domain, driver, guest_agent, log_path, "
                      "memory, name, nova, pid, policy, protect_swap, "
                      "qga_path, qmp_path, quiesce, require_quiesce, uuid, "
                      "vm)", str(e))
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              Spec.from_dict,
                              dict(QEMU, vm={'machine': 'q35', 'ram': 1}))
        self.assertIn("unknown key 'vm.ram'", str(e))

    def test_wrong_type_is_refused_by_name(self):
        for key, value, expected in (
                ('pid', '4242', "key 'pid': expected an integer, got "
                 "'4242' (str)"),
                ('pid', True, "key 'pid': expected an integer, got True"),
                ('nova', 'true', "key 'nova': expected true or false"),
                ('qmp_path', 7, "key 'qmp_path': expected a string"),
                ('vm', [1], "key 'vm': expected a JSON object, got [1]")):
            e = self.assertRaises(exception.InvalidProtectionSpec,
                                  Spec.from_dict, dict(QEMU, **{key: value}))
            self.assertIn(expected, str(e))
        e = self.assertRaises(
            exception.InvalidProtectionSpec, Spec.from_dict,
            dict(QEMU, vm={'memory_mb': '64'}))
        self.assertIn("key 'vm.memory_mb': expected an integer", str(e))
        e = self.assertRaises(
            exception.InvalidProtectionSpec, Spec.from_dict,
            dict(QEMU, vm={'serial_log': 7}))
        self.assertIn("key 'vm.serial_log': expected a string", str(e))
        spec = Spec.from_dict(dict(QEMU, vm={'serial_log': '/run/s.log'}))
        self.assertEqual('/run/s.log', spec.vm.serial_log)
        self.assertEqual({'serial_log': '/run/s.log'},
                         spec.to_dict()['vm'])
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              Spec.from_dict, ['name', 'x'])
        self.assertIn('expected a JSON object', str(e))
        # NOTE: built in code, checked the same way.
        self.assertRaises(exception.InvalidProtectionSpec, Spec, pid='1')

    def test_replace_checks_and_unsets(self):
        spec = Spec.from_dict(QEMU)
        self.assertEqual('vdb', spec.replace(disk='vdb').disk)
        self.assertNotIn('disk', spec.replace(disk=None).to_dict())
        self.assertEqual('disk0', spec.disk)
        self.assertRaises(exception.InvalidProtectionSpec, spec.replace,
                          pid='1')
        self.assertRaises(AttributeError, setattr, spec, 'pid', 1)

    def test_quiesce_settings(self):
        self.assertEqual(300, Spec().quiesce_every(300))
        self.assertEqual(-1, Spec(quiesce='always').quiesce_every(300))
        self.assertEqual(0, Spec(quiesce='never').quiesce_every(300))
        self.assertEqual(60, Spec(quiesce='60').quiesce_every(300))
        # hw_qemu_guest_agent=no: never quiesced.
        self.assertEqual(0, Spec(quiesce='always',
                                 guest_agent=False).quiesce_every(300))
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              Spec.from_dict, {'quiesce': 'hourly'})
        self.assertIn("'quiesce'", str(e))
        self.assertIn('hourly', str(e))
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              Spec.from_dict, {'require_quiesce': 'yes'})
        self.assertIn("'require_quiesce'", str(e))

    def test_for_agent_completes_a_nova_spec(self):
        spec = Spec.from_dict(NOVA).for_agent('i1', 'qemu')
        self.assertEqual('libvirt', spec.driver)
        self.assertEqual(NOVA['uuid'], spec.domain)
        self.assertEqual('web-1', spec.name)
        spec = Spec(nova=True).for_agent('i1', 'qemu')
        self.assertEqual(('i1', 'i1'), (spec.domain, spec.name))
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              Spec(name='vm').for_agent, 'i1', 'qemu')
        self.assertIn("lacks 'qmp_path', 'pid', which the qemu driver "
                      "needs", str(e))

    def test_old_state_file_loads_and_is_written_back_the_same(self):
        path = state_mod.InstanceState.path_for(self.path('agent'),
                                                OLD_STATE['instance'])
        os.makedirs(os.path.dirname(path))
        with open(path, 'w') as f:
            json.dump(OLD_STATE, f, indent=1)
        st = state_mod.InstanceState.load(path)
        self.assertIsInstance(st.spec, Spec)
        self.assertIsNone(st.spec.disk)
        self.assertEqual(4343, st.spec.pid)
        self.assertEqual('q35', st.spec.vm.machine)
        self.assertEqual(6, st.pending[0].sequence)
        st.save(self.path('agent'))
        with open(path) as f:
            again = json.load(f)
        expected = json.loads(json.dumps(OLD_STATE))
        # NOTE: a null key is now left out; nobody told it from a missing
        # one (every reader used .get).
        del expected['spec']['disk']
        self.assertEqual(expected, again)

    def test_state_file_keeps_keys_it_does_not_know(self):
        # NOTE: an older agent stored whatever its protect cast carried;
        # such a file still loads, and the key survives a save.
        path = state_mod.InstanceState.path_for(self.path('agent'), 'i2')
        os.makedirs(os.path.dirname(path))
        with open(path, 'w') as f:
            json.dump(dict(OLD_STATE, instance='i2',
                           spec=dict(QEMU, extra_key=[1, 2],
                                     vm={'node': 'n', 'cpu': 'max'})), f)
        st = state_mod.InstanceState.load(path)
        self.assertEqual('vm0', st.spec.name)
        st.save(self.path('agent'))
        with open(path) as f:
            spec = json.load(f)['spec']
        self.assertEqual([1, 2], spec['extra_key'])
        self.assertEqual({'node': 'n', 'cpu': 'max'}, spec['vm'])

    def test_state_file_with_an_ill_typed_spec_is_refused_clearly(self):
        path = state_mod.InstanceState.path_for(self.path('agent'), 'i3')
        os.makedirs(os.path.dirname(path))
        with open(path, 'w') as f:
            json.dump(dict(OLD_STATE, instance='i3',
                           spec=dict(QEMU, pid='12')), f)
        e = self.assertRaises(exception.HaSnapshotException,
                              state_mod.InstanceState.load, path)
        self.assertIn("key 'pid': expected an integer", str(e))
        self.assertIn('move it away', str(e))
