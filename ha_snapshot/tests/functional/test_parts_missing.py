""""Parts never received" as a typed error, over a real RabbitMQ.

A real ha-snapshot-manager service (in this process: its own database,
file store and spool) on a private exchange of the shared broker, and the
agent's own RPC client (ha_snapshot/manager/rpcapi.py) signed as host B.
A commit of a delta whose parts the manager does not hold comes back to
the agent as :class:`exception.PartsMissing`, the class itself (rebuilt by
oslo.messaging from ``allowed_remote_exmods``), with the missing part
numbers as data; a caller of the 1.1 API (an agent of an earlier release)
gets the plain InvalidDelta with the same message as before. A snapshot
agent whose commit meets it sends the whole delta again and gets it
durable.
"""

import os

import oslo_messaging as messaging

from ha_snapshot.agent import instance as instance_mod
from ha_snapshot.agent import state as state_mod
from ha_snapshot import exception
from ha_snapshot.manager import rpcapi as manager_rpcapi
from ha_snapshot import rpc_auth
from ha_snapshot.tests import base
from ha_snapshot.tests.functional import test_bus_auth as bus

KiB = 1 << 10
PROJECT = bus.PROJECT
HOST_B = bus.HOST_B


class PartsMissingTest(base.TestCase):

    def setUp(self):
        super().setUp()
        bus.start_signed_manager(self, 'parts')
        self.inst = base.new_uuid()
        self.manager.db.create_instance(self.inst, PROJECT, host=HOST_B,
                                        status='protecting', driver='qemu')
        self.api = self.client()
        self.api.register_instance(self.inst, PROJECT, HOST_B, 'qemu', {})

    def client(self, version_cap=None):
        """The manager API as host B's agent has it ([rpc_auth] key_file
        holding B's derived key)."""
        me = rpc_auth.host_identity(HOST_B)
        with open(self.master) as f:
            key = rpc_auth.derive(f.read().strip().encode(), me)
        return manager_rpcapi.ManagerAPI(
            self.transport, timeout=30, version_cap=version_cap,
            signer=rpc_auth.Signer(me, rpc_auth.Keys(own=me,
                                                     own_keys=[key])))

    def test_agent_gets_the_typed_error_with_the_part_numbers(self):
        raws = [os.urandom(16 * KiB) for _ in range(4)]
        header = dict(bus._header(self.inst, 0, None, b''.join(raws)),
                      part_count=4)
        part = bus._part(self.inst, 0, raws[1])
        self.api.put_part(self.inst, 0, dict(part, index=1))
        e = self.assertRaises(exception.PartsMissing,
                              self.api.commit_delta, header)
        # NOTE: the class itself, rebuilt by oslo.messaging (its _Remote
        # subclass), not a RemoteError whose text one would have to read.
        self.assertEqual('PartsMissing_Remote', type(e).__name__)
        self.assertIsInstance(e, exception.InvalidDelta)
        self.assertNotIsInstance(e, messaging.RemoteError)
        self.assertEqual([0, 2, 3], e.missing)
        self.assertEqual(4, e.kwargs['count'])
        # The old text stays, for the logs and earlier agents.
        self.assertIn('Delta 0 of instance %s rejected: part 0 of 4 was '
                      'never received (or was lost with a restart of the '
                      'manager)' % self.inst, str(e))
        self.assertIn('parts 0, 2, 3 of 4 missing; send it again', str(e))
        self.assertIn('Refused delta %s/0: ' % self.inst, self.log.output)

    def test_earlier_agent_gets_invalid_delta_with_the_same_text(self):
        old = self.client(version_cap='1.1')
        raw = os.urandom(16 * KiB)
        e = self.assertRaises(exception.InvalidDelta, old.commit_delta,
                              bus._header(self.inst, 0, None, raw))
        self.assertEqual('InvalidDelta_Remote', type(e).__name__)
        self.assertNotIsInstance(e, exception.PartsMissing)
        self.assertIn('part 0 of 1 was never received (or was lost with a '
                      'restart of the manager)', str(e))

    def test_snapshot_agent_sends_the_delta_again(self):
        """A delta whose parts the manager lost (its spool emptied after
        every part arrived): the agent's commit meets PartsMissing over the
        bus and sends the delta again; it lands durable, once."""
        disk = self.make_qcow2('base.qcow2', 4 * base.MiB,
                               'write -P 0x5a 0 256k')
        state = state_mod.InstanceState(instance=self.inst, project=PROJECT,
                                        spec={'name': 'vm', 'qmp_path': '/q',
                                              'pid': 1})
        entry = state_mod.Pending(sequence=0, disk='d', frozen=disk,
                                  backing=None, committable=False,
                                  full=True)
        api = self.client()
        lost = []
        real_commit = api.commit_delta

        def commit_after_losing_the_spool(header, timeout=None):
            if not lost:
                # NOTE: what a restarted manager finds: no part held.
                self.manager.manager.abandon(self.inst)
                lost.append(header['sequence'])
            return real_commit(header, timeout=timeout)

        api.commit_delta = commit_after_losing_the_spool
        self.conf.set_override('state_dir', self.path('agent'), group='agent')
        agent = instance_mod.SnapshotAgent(self.conf, None, api, state,
                                           None, HOST_B)
        agent.shipper.base_format = lambda entry: 'qcow2'
        agent.shipper.ship(entry)
        self.assertEqual(1, len(lost))
        self.assertIsNotNone(entry.restore_point)
        self.assertRegex(self.log.output, (
            r'Instance %s: Delta 0 of instance %s rejected: part 0 of 1 '
            r'was never received .*; sending again') % (self.inst,
                                                         self.inst))
        points = self.manager.db.list_restore_points(self.inst)
        self.assertEqual([entry.restore_point], [p.id for p in points])
