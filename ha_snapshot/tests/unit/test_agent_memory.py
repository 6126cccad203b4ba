"""A snapshot agent's memory does not grow with the deltas it ships.

The real shipping path of SnapshotAgent (inspection of a real qcow2
overlay, the delta engine, parts and commit) against a manager API that
acknowledges every delta with a new restore point, many more deltas than
the agent remembers.
"""

import uuid

from ha_snapshot.agent import instance as instance_mod
from ha_snapshot.agent import state as state_mod
from ha_snapshot import demo
from ha_snapshot.tests import base


class AckingManager:
    """Acknowledges every delta with a fresh restore point id."""

    def __init__(self):
        self.acks = []

    def put_part(self, instance, sequence, part, timeout=None):
        return {'instance': instance, 'sequence': sequence,
                'index': part['index']}

    def commit_delta(self, header, timeout=None):
        self.acks.append(str(uuid.uuid4()))
        return {'restore_point': self.acks[-1]}


class AgentMemoryTest(base.TestCase):

    def test_restore_points_remembered_are_bounded(self):
        conf = demo.make_conf(self.path('work'), interval=1.0,
                              rpo_target=5.0)
        backing = self.make_qcow2('base.qcow2', 4 * base.MiB)
        overlay = base.new_overlay(self.path('top.qcow2'), backing)
        base.qemu_io(overlay, 'write -P 0x5a 0 64k')
        state = state_mod.InstanceState(instance=base.new_uuid(),
                                        project='p', spec={})
        manager = AckingManager()
        agent = instance_mod.SnapshotAgent(conf, None, manager, state, None,
                                           'host')
        limit = instance_mod.RECENT_RESTORE_POINTS
        shipped = 3 * limit + 5
        for sequence in range(shipped):
            entry = state_mod.Pending(
                sequence=sequence, disk='d', frozen=overlay, backing=backing,
                committable=True, taken_at=1000.0 + sequence)
            agent.shipper.ship(entry)
        self.assertEqual(shipped, len(manager.acks))
        self.assertEqual(shipped, agent.durable_count)
        self.assertLessEqual(len(agent.taken_at), limit)
        self.assertLessEqual(len(agent.restore_points), limit)
        # The latest are the ones kept, with their snapshot times.
        self.assertEqual(manager.acks[-limit:], list(agent.restore_points))
        self.assertEqual(1000.0 + shipped - 1,
                         agent.taken_at[manager.acks[-1]])
        self.assertNotIn(manager.acks[0], agent.taken_at)
