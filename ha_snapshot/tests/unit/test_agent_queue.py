"""The persisted pending queue between the snapshot loop and the shipper."""

import threading

from ha_snapshot.agent import state as state_mod
from ha_snapshot.tests import base


class PendingQueueTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.path('agent')
        self.state = state_mod.InstanceState(
            instance=base.new_uuid(), project='p',
            spec={'name': 'vm', 'qmp_path': '/q', 'pid': 1},
            next_sequence=5, parent='rp0')
        self.queue = state_mod.PendingQueue(self.state, self.dir)

    def reloaded(self):
        return state_mod.InstanceState.load(
            state_mod.InstanceState.path_for(self.dir, self.state.instance))

    def test_entries_go_through_in_order_and_every_step_is_saved(self):
        first = self.queue.add(disk='d', frozen='/f/5', backing='/f/b',
                               committable=True)
        second = self.queue.add(disk='d', frozen='/f/6', backing='/f/5',
                                committable=True)
        self.queue.save()
        self.assertEqual((5, 6, 7), (first.sequence, second.sequence,
                                     self.state.next_sequence))
        self.assertEqual([5, 6], [p.sequence for p in
                                  self.reloaded().pending])
        self.assertIs(first, self.queue.oldest())
        self.assertEqual(2, self.queue.unacknowledged())
        self.queue.fix_parent(first)
        self.assertEqual('rp0', self.reloaded().pending[0].parent)
        self.queue.acknowledged(first, 'rp1')
        saved = self.reloaded()
        self.assertEqual(('rp1', 'rp1'), (saved.pending[0].restore_point,
                                          saved.parent))
        self.assertEqual(1, self.queue.unacknowledged())
        self.queue.remove(first)
        # NOTE: the commit rewrote the next overlay's backing.
        saved = self.reloaded()
        self.assertEqual([6], [p.sequence for p in saved.pending])
        self.assertEqual('/f/b', saved.pending[0].backing)
        self.assertIs(second, self.queue.oldest())

    def test_remove_wakes_a_snapshot_waiting_for_room(self):
        entry = self.queue.add(disk='d', frozen='/f/5', backing=None,
                               committable=False)
        waiting = threading.Event()

        def wait_for_room():
            with self.queue.progress:
                waiting.set()
                # NOTE: one wait, far longer than the join below: only a
                # notification ends it in time.
                self.queue.progress.wait(60)

        t = threading.Thread(target=wait_for_room)
        t.start()
        self.assertTrue(waiting.wait(10), 'the waiter to start')
        # NOTE: taking the lock means the waiter has released it: waits.
        self.queue.acknowledged(entry, 'rp1')
        self.queue.remove(entry)
        t.join(10)
        self.assertFalse(t.is_alive(), 'the waiter was not woken')
        self.assertIsNone(self.queue.oldest())
