""""Parts never received" as a typed error: PartsMissing.

Raised by the spool with the missing part numbers, passed through the
manager's commit (or turned into the plain InvalidDelta of the same words
for RPC callers before 1.2), rebuilt as itself from what oslo.messaging
puts on the bus, and recognised by the agent's shipper by its type.
The same over a real RabbitMQ: tests/functional/test_parts_missing.py.
"""

import json
import sys

import oslo_messaging as messaging
from oslo_messaging._drivers import common as rpc_common

from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot.manager import spool as spool_mod
from ha_snapshot import rpc
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import test_manager

MiB = base.MiB


class _SpoolBase(base.TestCase):
    """A delta of three parts of 1 MiB, as in test_spool."""

    def setUp(self):
        super().setUp()
        self.inst = base.new_uuid()
        disk = self.make_qcow2('disk.qcow2', 8 * MiB, 'write -P 0x11 0 1M',
                               'write -P 0x22 1M 1M', 'write -P 0x33 2M 1M')
        info = image_inspect.inspect(disk, 'qcow2', max_virtual_size=1 << 40)
        d = delta_images.from_image(info, instance=self.inst, project='p',
                                    sequence=4, parent=None,
                                    max_part_bytes=MiB,
                                    max_part_extents=64)
        self.prim = json.loads(json.dumps(d.to_primitive()))
        self.header = delta_mod.header_from_primitive(self.prim['header'])
        self.root = self.path('spool')

    def spool(self, memory_bytes):
        return spool_mod.Spool(self.root, MiB, memory_bytes=memory_bytes)

    def put_all(self, spool):
        for part in self.prim['parts']:
            spool.put(self.inst, 4, part)


class SpoolPartsMissingTest(_SpoolBase):

    def test_every_missing_part_is_named(self):
        spool = self.spool(4 * MiB)
        spool.put(self.inst, 4, self.prim['parts'][1])
        e = self.assertRaises(exception.PartsMissing, spool.load,
                              self.header)
        self.assertEqual([0, 2], e.missing)
        self.assertEqual(3, e.kwargs['count'])
        self.assertIsInstance(e, exception.InvalidDelta)
        self.assertEqual(
            'Delta 4 of instance %s rejected: part 0 of 3 was never '
            'received (or was lost with a restart of the manager); parts '
            '0, 2 of 3 missing; send it again' % self.inst, str(e))

    def test_one_missing_part_keeps_the_old_words(self):
        spool = self.spool(4 * MiB)
        for part in self.prim['parts'][:2]:
            spool.put(self.inst, 4, part)
        e = self.assertRaises(exception.PartsMissing, spool.load,
                              self.header)
        self.assertEqual([2], e.missing)
        self.assertEqual(
            'Delta 4 of instance %s rejected: part 2 of 3 was never '
            'received (or was lost with a restart of the manager); send it '
            'again' % self.inst, str(e))

    def test_a_torn_part_file_is_missing_too(self):
        spool = self.spool(0)
        self.put_all(spool)
        with open(self.path('spool/%s/%012d/%06d.part'
                            % (self.inst, 4, 1)), 'r+b') as f:
            f.truncate(2)
        e = self.assertRaises(exception.PartsMissing,
                              self.spool(0).load, self.header)
        self.assertEqual([1], e.missing)
        self.assertIn('part 1 of 3 was never received whole', str(e))


class CrossesTheBusAsItselfTest(_SpoolBase):
    """What oslo.messaging does with it on each side of the bus (the same
    functions its drivers call)."""

    def remote(self, e):
        try:
            raise e
        except exception.HaSnapshotException:
            data = rpc_common.serialize_remote_exception(sys.exc_info())
        return rpc_common.deserialize_remote_exception(data,
                                                       rpc.ALLOWED_EXMODS)

    def test_rebuilt_with_its_data(self):
        e = self.remote(exception.PartsMissing(
            instance=self.inst, sequence=4, missing=[0, 2], count=3,
            reason='part 0 of 3 was never received; send it again'))
        self.assertIsInstance(e, exception.PartsMissing)
        self.assertEqual('PartsMissing_Remote', type(e).__name__)
        self.assertEqual([0, 2], e.missing)
        self.assertIn('part 0 of 3 was never received', str(e))

    def test_a_module_not_allowed_is_only_a_remote_error(self):
        # NOTE: why ALLOWED_EXMODS names ha_snapshot.exception.
        try:
            raise exception.PartsMissing(instance='i', sequence=1,
                                         missing=[0], count=1, reason='r')
        except exception.HaSnapshotException:
            data = rpc_common.serialize_remote_exception(sys.exc_info())
        e = rpc_common.deserialize_remote_exception(data, [])
        self.assertIsInstance(e, messaging.RemoteError)


class ManagerAndAgentTest(test_manager._Base):

    def lose_spool(self):
        """A manager restarted with all parts lost (memory only)."""
        self.spool = spool_mod.Spool(self.path('spool2'), MiB)
        self.mgr = manager_mod.Manager(self.conf, self.store, self.db,
                                       self.spool)

    def test_commit_raises_it_or_the_old_class_for_old_callers(self):
        self.register()
        prim = self.delta(self.base, 0, None, backing=False)
        self.assertGreater(prim['header']['part_count'], 1)
        for part in prim['parts'][1:]:
            self.mgr.put_part(self.inst, 0, part)
        e = self.assertRaises(exception.PartsMissing, self.mgr.commit_delta,
                              prim['header'])
        self.assertEqual([0], e.missing)
        # NOTE: refused, so abandoned: every part is missing now.
        e = self.assertRaises(exception.PartsMissing, self.mgr.commit_delta,
                              prim['header'])
        self.assertEqual(list(range(prim['header']['part_count'])),
                         e.missing)
        # An agent of an earlier release (RPC 1.1) cannot rebuild the
        # subclass: it gets the base class, the same words.
        endpoint = manager_mod.ManagerEndpoint(self.mgr)
        # NOTE: the endpoint's errors are expected ones: what goes on the
        # bus is the exception inside.
        e = self.assertRaises(messaging.ExpectedException,
                              endpoint.commit_delta, None,
                              prim['header']).exc_info[1]
        self.assertIs(exception.InvalidDelta, type(e))
        self.assertIn('part 0 of %d was never received (or was lost with a '
                      'restart of the manager)'
                      % prim['header']['part_count'], str(e))
        e = self.assertRaises(messaging.ExpectedException,
                              endpoint.commit_delta, None, prim['header'],
                              raise_parts_missing=True).exc_info[1]
        self.assertIsInstance(e, exception.PartsMissing)
        self.assertEqual([], self.store.restore_points(self.inst))

    def agent(self, api):
        from ha_snapshot.agent import instance as agent_mod
        from ha_snapshot.agent import state as state_mod
        self.conf.set_override('state_dir', self.path('agent'), group='agent')
        self.conf.set_override('retry_initial', 0.05, group='agent')
        self.conf.set_override('retry_max', 0.1, group='agent')
        state = state_mod.InstanceState(instance=self.inst, project='p1',
                                        spec={})
        entry = state_mod.Pending(sequence=0, disk='d', frozen=self.base,
                                  backing=None, committable=False,
                                  full=True)
        snap = agent_mod.SnapshotAgent(self.conf, None, api, state, None,
                                       'host1')
        snap.shipper.base_format = lambda entry: 'qcow2'
        return snap, entry

    def test_agent_sends_the_delta_again_on_the_type(self):
        self.register()
        commits = []
        test = self

        class Api:
            def put_part(api, instance, sequence, part, timeout=None):
                return test.mgr.put_part(instance, sequence, part)

            def commit_delta(api, header, timeout=None):
                commits.append(header['sequence'])
                if len(commits) == 1:
                    test.lose_spool()
                return test.mgr.commit_delta(header)
        snap, entry = self.agent(Api())
        with self.assertLogs('ha_snapshot.agent.shipper', 'WARNING') as logs:
            snap.shipper.ship(entry)
        self.assertEqual([0, 0], commits)
        self.assertIn('part 0 of', logs.output[0])
        self.assertIn('sending again', logs.output[0])
        self.assertEqual(entry.restore_point,
                         self.store.newest(self.inst).id)

    def test_agent_no_longer_reads_the_text(self):
        # NOTE: an InvalidDelta that merely says "never received" is a
        # refusal like any other now: the delta is not sent again.
        self.register()

        class Api:
            def put_part(api, instance, sequence, part, timeout=None):
                return {}

            def commit_delta(api, header, timeout=None):
                raise exception.InvalidDelta(
                    instance=header['instance'], sequence=0,
                    reason='part 0 of 1 was never received')
        snap, entry = self.agent(Api())
        self.assertRaises(exception.InvalidDelta, snap.shipper.ship, entry)
        self.assertIsNone(entry.restore_point)
