"""The agent's pipelined shipping against the real Manager (no bus): the
next delta's parts travel while the previous one merges, its parent is
fixed from that ack, and the committer removes entries only once durable."""

import threading

from ha_snapshot.agent import instance as agent_mod
from ha_snapshot.agent import state as state_mod
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import test_manager

MiB = base.MiB


class PipelineTestCase(test_manager._Base):

    def setUp(self):
        super().setUp()
        self.conf.set_override('state_dir', self.path('agent'), group='agent')
        self.conf.set_override('retry_initial', 0.05, group='agent')
        self.conf.set_override('retry_max', 0.1, group='agent')
        self.register()
        one = base.new_overlay(self.path('one.qcow2'), self.base)
        base.qemu_io(one, 'write -P 0x22 1M 1M')
        two = base.new_overlay(self.path('two.qcow2'), one)
        base.qemu_io(two, 'write -P 0x33 4M 1M')
        self.state = state_mod.InstanceState(instance=self.inst,
                                             project='p1', spec={})
        self.snap = agent_mod.SnapshotAgent(self.conf, None, None,
                                            self.state, None, 'host1')
        self.snap.shipper.base_format = lambda entry: 'qcow2'
        # NOTE: not committable: the committer only removes them (no VM).
        queue = self.snap.queue
        queue.add(disk='d', frozen=self.base, backing=None,
                  committable=False, full=True)
        queue.add(disk='d', frozen=one, backing=self.base,
                  committable=False)
        queue.add(disk='d', frozen=two, backing=one, committable=False)
        queue.save()
        self.addCleanup(self.snap._stopping.set)
        self.addCleanup(self.snap.shipper.join, 10)

    def api(self, hold_sequence, until):
        """A client of the in-process manager recording what it is asked;
        the commit call of ``hold_sequence`` lasts until ``until`` is set
        (at most 10 s)."""
        events = []
        test = self

        class Api:
            def put_part(api, instance, sequence, part, timeout=None):
                events.append(('put', sequence))
                if sequence == hold_sequence + 1:
                    until.set()
                return test.mgr.put_part(instance, sequence, part)

            def commit_delta(api, header, timeout=None):
                sequence = header['sequence']
                if sequence == hold_sequence:
                    events.append(('held', until.wait(10)))
                ack = test.mgr.commit_delta(header)
                events.append(('acked', sequence))
                return ack
        return Api(), events

    def test_next_parts_travel_while_the_previous_merges(self):
        put_next = threading.Event()
        api, events = self.api(1, put_next)
        self.snap.manager_api = api
        entries = list(self.state.pending)
        self.snap.shipper.ship_pending()
        # NOTE: delta 2's parts were sent while delta 1's commit call
        # waited for them: without the pipeline it would wait in vain.
        self.assertIn(('held', True), events)
        self.assertLess(events.index(('put', 2)), events.index(('acked', 1)))
        # Each delta applies to the previous one's restore point, fixed
        # (and saved) only once that was durable.
        self.assertEqual(entries[1].restore_point, entries[2].parent)
        self.assertEqual(entries[0].restore_point, entries[1].parent)
        newest = self.store.newest(self.inst)
        self.assertEqual(entries[2].restore_point, newest.id)
        self.assertEqual(entries[1].restore_point, newest.parent)
        saved = state_mod.InstanceState.load(state_mod.InstanceState.path_for(
            self.conf.agent.state_dir, self.inst))
        self.assertEqual([e.restore_point for e in entries],
                         [p.restore_point for p in saved.pending])
        self.assertEqual(newest.id, saved.parent)

    def test_committer_removes_only_durable_entries_in_order(self):
        put_next = threading.Event()
        api, _events = self.api(1, put_next)
        self.snap.manager_api = api
        committer = self.snap.shipper.committer
        # NOTE: nothing acknowledged yet: nothing to commit.
        self.assertIsNone(committer.ready())
        committer.start()
        self.snap.shipper.ship_pending()
        base.wait_for(lambda: not self.state.pending, 10,
                      'the committer to remove the durable entries')
        self.assertEqual(self.store.newest(self.inst).id, self.state.parent)

    def test_a_failed_commit_call_is_sent_again_and_recognised(self):
        put_next = threading.Event()
        api, events = self.api(1, put_next)
        calls = []
        commit = api.commit_delta

        def failing_once(header, timeout=None):
            calls.append(header['sequence'])
            ack = commit(header, timeout)
            if header['sequence'] == 1 and calls.count(1) == 1:
                # NOTE: merged, but the ack is lost on the way back.
                raise ConnectionError('reply lost')
            return ack
        api.commit_delta = failing_once
        self.snap.manager_api = api
        entries = list(self.state.pending)
        self.snap.shipper.ship_pending()
        # The retry of delta 1 is answered with the restore point it made,
        # and delta 2 still lands on it.
        self.assertEqual(2, calls.count(1))
        self.assertEqual(entries[1].restore_point, entries[2].parent)
        self.assertEqual(entries[2].restore_point,
                         self.store.newest(self.inst).id)
