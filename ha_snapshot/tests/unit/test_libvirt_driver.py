"""The libvirt driver's pure parts, the agent's driver choice and the
agent RPC API 1.1 rebaseline (over oslo.messaging's fake:// transport).

The driver against a real libvirtd: tests/functional/test_hypervisor_libvirt.
"""

import json
import os
import threading
from xml.etree import ElementTree

import libvirt
import oslo_messaging as messaging

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.agent import service as agent_service
from ha_snapshot.agent import state as state_mod
from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv
from ha_snapshot.hypervisor import libvirt_events as events
from ha_snapshot.hypervisor import libvirt_tracking as tracking
from ha_snapshot import protection_spec
from ha_snapshot import rpc
from ha_snapshot.tests import base

LIVE_XML = '''<domain type='kvm' id='3'>
  <name>instance-00000001</name>
  <uuid>6b3f0c51-0d2e-4a7b-9a57-0a1d36f1e7a2</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/nova/instances/6b3f/disk' index='2'/>
      <backingStore type='file' index='3'>
        <format type='raw'/>
        <source file='/var/lib/nova/instances/_base/abc'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/nova/instances/6b3f/disk.config' index='1'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <alias name='sata0-0-0'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='vms/x'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>'''


class TestTrackingXml(base.TestCase):

    def test_domain_disks_follow_the_backing_chain(self):
        disks = tracking.domain_disks(LIVE_XML)
        self.assertEqual(['vda', 'sda', 'vdb'], [d.target for d in disks])
        vda, sda, vdb = disks
        self.assertEqual((('/var/lib/nova/instances/6b3f/disk', 'qcow2',
                           '2'),
                          ('/var/lib/nova/instances/_base/abc', 'raw', '3')),
                         vda.chain)
        self.assertEqual(('virtio-disk0', 'virtio', 'disk', False),
                         (vda.alias, vda.bus, vda.device, vda.readonly))
        self.assertEqual(('cdrom', True), (sda.device, sda.readonly))
        self.assertEqual((), vdb.chain)  # NOTE: no file: not ours

    def test_checkpoint_and_backup_xml_name_every_disk(self):
        cp = ElementTree.fromstring(tracking.checkpoint_xml(
            'ha-snapshot-7', ['vda'], ['vda', 'sda']))
        self.assertEqual('ha-snapshot-7', cp.findtext('name'))
        self.assertEqual(
            [{'name': 'vda', 'checkpoint': 'bitmap',
              'bitmap': 'ha-snapshot-7'},
             {'name': 'sda', 'checkpoint': 'no'}],
            [d.attrib for d in cp.findall('./disks/disk')])
        bk = ElementTree.fromstring(tracking.backup_xml(
            'ha-snapshot-6', {'vda': '/b/x.qcow2'}, ['vda', 'sda']))
        self.assertEqual('push', bk.get('mode'))
        self.assertEqual('ha-snapshot-6', bk.findtext('incremental'))
        vda, sda = bk.findall('./disks/disk')
        self.assertEqual('/b/x.qcow2', vda.find('target').get('file'))
        self.assertEqual('qcow2', vda.find('driver').get('type'))
        self.assertEqual('no', sda.get('backup'))
        full = ElementTree.fromstring(tracking.backup_xml(
            None, {'vda': '/b/y.qcow2'}, ['vda']))
        self.assertIsNone(full.find('incremental'))

    def test_redefinable_drops_the_parent(self):
        xml = ('<domaincheckpoint>\n  <name>b</name>\n  <parent>\n'
               '    <name>a</name>\n  </parent>\n  <disks/>\n'
               '</domaincheckpoint>')
        out = ElementTree.fromstring(tracking.redefinable(xml))
        self.assertIsNone(out.find('parent'))
        self.assertEqual('b', out.findtext('name'))


class TestTrackingState(base.TestCase):

    def test_round_trip_and_queries(self):
        t = tracking.Tracking.load(self.path('dom'))
        self.assertEqual([], t.checkpoints)
        a, b = t.new_name(), t.new_name()
        self.assertNotEqual(a, b)
        self.assertTrue(a.startswith(tracking.PREFIX))
        t.checkpoints = [tracking.Checkpoint(a, '<x/>', ['vda'], full=True),
                         tracking.Checkpoint(b, '<y/>', ['vda'])]
        t.save()
        with open(t.delta_path(b, 'vda'), 'w') as f:
            f.write('x')
        again = tracking.Tracking.load(self.path('dom'))
        self.assertEqual(t.checkpoints, again.checkpoints)
        self.assertEqual(t.counter, again.counter)
        self.assertEqual(b, again.newest_live().name)
        self.assertEqual({}, again.files(again.checkpoints[0]))
        self.assertEqual({'vda': again.delta_path(b, 'vda')},
                         again.files(again.checkpoints[1]))
        again.checkpoints[-1].live = False
        self.assertIsNone(again.newest_live())

    def test_unreadable_state_is_kept_aside_and_starts_fresh(self):
        os.makedirs(self.path('dom'))
        path = self.path('dom', tracking.STATE_FILE)
        for text in ('{not json', json.dumps({'counter': 1}),
                     json.dumps({'counter': 1, 'checkpoints': [
                         {'name': 'a', 'bogus': 1}]})):
            with open(path, 'w') as f:
                f.write(text)
            t = tracking.Tracking.load(self.path('dom'))
            self.assertEqual([], t.checkpoints)
            self.assertIsNone(t.newest_live())
            self.assertFalse(os.path.exists(path))
            aside = [n for n in os.listdir(self.path('dom'))
                     if n.startswith(tracking.STATE_FILE + '.unreadable')]
            self.assertEqual(1, len(aside))
            with open(self.path('dom', aside[0])) as f:
                self.assertEqual(text, f.read())  # NOTE: nothing lost
            os.unlink(self.path('dom', aside[0]))


class TestEventMapping(base.TestCase):

    def test_lifecycle_events_map_to_the_contract(self):
        lv = libvirt
        cases = [
            ((lv.VIR_DOMAIN_EVENT_STOPPED,
              lv.VIR_DOMAIN_EVENT_STOPPED_CRASHED), hv.PROCESS_EXITED,
             'crashed'),
            ((lv.VIR_DOMAIN_EVENT_STOPPED,
              lv.VIR_DOMAIN_EVENT_STOPPED_DESTROYED), hv.PROCESS_EXITED,
             'destroyed'),
            ((lv.VIR_DOMAIN_EVENT_STOPPED,
              lv.VIR_DOMAIN_EVENT_STOPPED_FAILED), hv.PROCESS_EXITED,
             'failed'),
            ((lv.VIR_DOMAIN_EVENT_STOPPED,
              lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED), events.DOMAIN_STOPPED,
             'migrated'),
            ((lv.VIR_DOMAIN_EVENT_SUSPENDED,
              lv.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR), 'STOP', 'ioerror'),
            ((lv.VIR_DOMAIN_EVENT_SUSPENDED,
              lv.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED),
             events.DOMAIN_SUSPENDED, None),
        ]
        for args, kind, reason in cases:
            got_kind, data = events.lifecycle(lv, *args)
            self.assertEqual(kind, got_kind, args)
            self.assertEqual(reason, data.get('reason'), args)
        kind, data = events.lifecycle(lv, lv.VIR_DOMAIN_EVENT_SHUTDOWN,
                                      lv.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)
        self.assertEqual(('SHUTDOWN', False), (kind, data['guest']))
        kind, data = events.lifecycle(lv, lv.VIR_DOMAIN_EVENT_SHUTDOWN,
                                      lv.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST)
        self.assertEqual(('SHUTDOWN', True), (kind, data['guest']))
        self.assertEqual('GUEST_PANICKED', events.lifecycle(
            lv, lv.VIR_DOMAIN_EVENT_CRASHED, 0)[0])
        self.assertEqual(('BLOCK_IO_ERROR', {
            'device': 'virtio-disk0', 'path': '/d', 'action': 1,
            'reason': 'enospc'}), events.io_error('/d', 'virtio-disk0', 1,
                                                  'enospc'))


class TestAgentDriverChoice(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir,
                                   agent__state_dir=self.path('agent'))
        self.svc = agent_service.AgentService(self.conf, driver=object())

    def test_driver_from_the_spec(self):
        Spec = protection_spec.ProtectionSpec
        self.assertEqual('libvirt', self.svc.driver_name(Spec(nova=True)))
        self.assertEqual('qemu', self.svc.driver_name(Spec(name='x')))
        self.assertEqual('libvirt', self.svc.driver_name(
            Spec(driver='libvirt')))
        self.assertIs(self.svc.driver, self.svc.driver_for(Spec(name='x')))
        e = self.assertRaises(exception.HypervisorDriverNotFound,
                              self.svc.driver_for, Spec(driver='nosuch'))
        self.assertIn("'nosuch'", str(e))

    def test_protect_refuses_incomplete_specs_and_records_nothing(self):
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              self.svc.protect, 'i1', 'p',
                              {'driver': 'libvirt'})
        self.assertIn("lacks 'domain', which the libvirt driver needs",
                      str(e))
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              self.svc.protect, 'i1', 'p', {'name': 'vm'})
        self.assertIn("lacks 'qmp_path', 'pid', which the qemu driver",
                      str(e))
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              self.svc.protect, 'i1', 'p',
                              {'name': 'vm', 'qmp_path': '/q', 'pid': '12'})
        self.assertIn("key 'pid': expected an integer, got '12'", str(e))
        self.assertEqual([], state_mod.InstanceState.load_all(
            self.path('agent')))

    def test_rebaseline_of_an_unknown_instance(self):
        e = self.assertRaises(exception.InstanceNotFound,
                              self.svc.rebaseline, 'nope', 'rp1')
        self.assertIn('nope', str(e))


class RecordingService:
    """What AgentEndpoint calls, recorded (the RPC layer is under test)."""

    def __init__(self):
        self.calls = []
        self.done = threading.Event()

    def rebaseline(self, instance, restore_point):
        self.calls.append(('rebaseline', instance, restore_point))
        if instance == 'unknown':
            raise exception.InstanceNotFound('Instance unknown is not '
                                             'protected on h1.',
                                             instance=instance)
        return {'instance': instance, 'restore_point': restore_point,
                'driver': 'libvirt', 'full': False}


class TestRebaselineRpc(base.TestCase):

    def test_rebaseline_call_over_the_bus(self):
        conf = base.make_conf(self.store_dir)
        transport = rpc.get_transport(conf, 'fake://')
        self.addCleanup(transport.cleanup)
        svc = RecordingService()
        server = rpc.get_server(transport, rpc.AGENT_TOPIC, 'h1',
                                [agent_service.AgentEndpoint(svc)])
        server.start()
        self.addCleanup(server.wait)
        self.addCleanup(server.stop)
        api = agent_rpcapi.AgentAPI(transport)
        self.assertEqual('1.3', agent_rpcapi.VERSION)
        result = api.rebaseline('h1', 'i1', 'rp9', timeout=10)
        self.assertEqual({'instance': 'i1', 'restore_point': 'rp9',
                          'driver': 'libvirt', 'full': False}, result)
        self.assertEqual([('rebaseline', 'i1', 'rp9')], svc.calls)
        self.assertRaises(exception.InstanceNotFound, api.rebaseline, 'h1',
                          'unknown', 'rp9', timeout=10)
        # NOTE: an agent still on 1.0 is not asked what it cannot do.
        old = agent_rpcapi.AgentAPI(transport, version_cap='1.0')
        self.assertRaises(messaging.RPCVersionCapError, old.rebaseline,
                          'h1', 'i1', 'rp9')
