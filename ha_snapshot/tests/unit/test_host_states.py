"""Every decision of the host state machine, fed observations round by
round (ha_snapshot.manager.host_states is pure: no database, no Nova)."""

import testtools

from ha_snapshot.manager import host_states as hs

A = hs.Action
S = hs.HostState
LIMITS = hs.Limits(agent_timeout=60, confirm_time=0, hold_down=300,
                   partition_fraction=0.5, partition_min_hosts=2)


def obs(host='c1', age=5.0, nova='up', **kw):
    return hs.Observation(host=host, agent_age=age, nova=nova, **kw)


class Rounds:
    """Rounds of one or more hosts, memories carried over."""

    def __init__(self, limits=LIMITS, now=1000.0):
        self.limits = limits
        self.now = now
        self.memories = {}

    def __call__(self, *observations, advance=10.0):
        result = hs.decide_round(observations, self.memories, self.limits,
                                 self.now)
        self.memories = {h: d.memory for h, d in result.decisions.items()}
        self.now += advance
        return result

    def one(self, observation, advance=10.0):
        return self(observation, advance=advance).decisions[
            observation.host]


class HostStatesTestCase(testtools.TestCase):

    def test_beating_agent_is_healthy_whatever_nova_says(self):
        for nova in ('up', 'down', None):
            d = Rounds().one(obs(nova=nova))
            self.assertEqual((S.HEALTHY, A.NOTHING, False),
                             (d.state, d.action, d.report), nova)

    def test_silence_shorter_than_agent_timeout_is_nothing(self):
        d = Rounds().one(obs(age=60.0, nova='down'))
        self.assertEqual((S.HEALTHY, A.NOTHING), (d.state, d.action))

    def test_agent_dead_but_nova_up_never_acts_and_alerts_once(self):
        rounds = Rounds()
        decisions = [rounds.one(obs(age=61.0 + 10 * n)) for n in range(5)]
        self.assertEqual([A.ALERT] * 5, [d.action for d in decisions])
        self.assertEqual([S.SUSPECT] * 5, [d.state for d in decisions])
        # ERROR logged once per episode, not every round.
        self.assertEqual([True, False, False, False, False],
                         [d.report for d in decisions])
        self.assertIn('Nova reports its compute service up',
                      decisions[0].reason)
        self.assertNotIn(A.FENCE, [d.action for d in decisions])

    def test_nova_down_and_agent_silent_fences(self):
        rounds = Rounds()
        d = rounds.one(obs(age=70.0, nova='down'))
        self.assertEqual((S.FAILED, A.FENCE, True),
                         (d.state, d.action, d.report))
        self.assertIn('Nova reports its compute service down', d.reason)
        # suspect since the agent's timeout ran out, not since this round.
        self.assertEqual(1000.0 - 10.0, d.memory.suspect_since)

    def test_silent_then_nova_down_fences_at_the_round_nova_says_so(self):
        rounds = Rounds()
        self.assertEqual(A.ALERT, rounds.one(obs(age=61.0)).action)
        self.assertEqual(A.ALERT, rounds.one(obs(age=71.0)).action)
        d = rounds.one(obs(age=81.0, nova='down'))
        self.assertEqual((S.FAILED, A.FENCE), (d.state, d.action))

    def test_powered_off_confirms_before_nova(self):
        d = Rounds().one(obs(age=61.0, nova='up', powered_off=True))
        self.assertEqual((S.FAILED, A.FENCE), (d.state, d.action))
        self.assertIn('powered off', d.reason)

    def test_confirm_time_waits_for_consecutive_down_rounds(self):
        rounds = Rounds(hs.Limits(agent_timeout=60, confirm_time=25))
        actions = [rounds.one(obs(age=61.0 + 10 * n, nova='down')).action
                   for n in range(4)]
        # Down seen at 1000, 1010, 1020: under 25 s; at 1030 it is 30 s.
        self.assertEqual([A.NOTHING, A.NOTHING, A.NOTHING, A.FENCE],
                         actions)

    def test_confirm_time_restarts_when_nova_flaps_up(self):
        rounds = Rounds(hs.Limits(agent_timeout=60, confirm_time=15))
        self.assertEqual(A.NOTHING, rounds.one(obs(age=61, nova='down'))
                         .action)
        self.assertEqual(A.ALERT, rounds.one(obs(age=71, nova='up')).action)
        self.assertEqual(A.NOTHING, rounds.one(obs(age=81, nova='down'))
                         .action)
        self.assertEqual(A.NOTHING, rounds.one(obs(age=91, nova='down'))
                         .action)
        self.assertEqual(A.FENCE, rounds.one(obs(age=101, nova='down'))
                         .action)

    def test_all_agents_silent_is_a_partition_nothing_fenced(self):
        rounds = Rounds()
        result = rounds(obs('c1', 90, 'down'), obs('c2', 90, 'down'),
                        obs('c3', 90, 'up'))
        self.assertTrue(result.partition)
        self.assertEqual(('c1', 'c2', 'c3'), result.silent)
        self.assertEqual({A.NOTHING},
                         {d.action for d in result.decisions.values()})
        self.assertIn('partitioned', result.decisions['c1'].reason)

    def test_partition_threshold(self):
        # 2 of 3 silent: more than half: partition.
        r = hs.decide_round([obs('c1', 90, 'down'), obs('c2', 90, 'down'),
                             obs('c3', 5)], {}, LIMITS, 0.0)
        self.assertTrue(r.partition)
        # 1 of 2: half, not more: the silent one is a host failure.
        r = hs.decide_round([obs('c1', 90, 'down'), obs('c2', 5)], {},
                            LIMITS, 0.0)
        self.assertFalse(r.partition)
        self.assertEqual(A.FENCE, r.decisions['c1'].action)
        # One host alone, silent: never a partition (min hosts 2).
        r = hs.decide_round([obs('c1', 90, 'down')], {}, LIMITS, 0.0)
        self.assertFalse(r.partition)
        self.assertEqual(A.FENCE, r.decisions['c1'].action)
        # Hosts already failed, disabled or unknown to Nova do not count.
        r = hs.decide_round([obs('c1', 90, 'down'),
                             obs('c2', 900, 'down', failure='fenced'),
                             obs('c3', 900, 'down', disabled=True),
                             obs('c4', 900, None), obs('c5', 5)],
                            {}, LIMITS, 0.0)
        self.assertFalse(r.partition)
        self.assertEqual(2, r.monitored)
        self.assertEqual(A.FENCE, r.decisions['c1'].action)
        # A fraction of 1.0 turns partition detection off.
        r = hs.decide_round([obs('c1', 90, 'down'), obs('c2', 90, 'down')],
                            {}, hs.Limits(agent_timeout=60,
                                          partition_fraction=1.0), 0.0)
        self.assertFalse(r.partition)

    def test_after_a_partition_confirm_time_starts_over(self):
        rounds = Rounds(hs.Limits(agent_timeout=60, confirm_time=15))
        rounds(obs('c1', 90, 'down'), obs('c2', 90, 'down'))
        rounds(obs('c1', 100, 'down'), obs('c2', 100, 'down'))
        # c2 is back: only c1 is silent; its down time counts from now.
        r = rounds(obs('c1', 110, 'down'), obs('c2', 1))
        self.assertFalse(r.partition)
        self.assertEqual(A.NOTHING, r.decisions['c1'].action)
        rounds(obs('c1', 120, 'down'), obs('c2', 1))
        r = rounds(obs('c1', 130, 'down'), obs('c2', 1))
        self.assertEqual(A.FENCE, r.decisions['c1'].action)

    def test_unknown_to_nova_or_disabled_is_left_alone(self):
        d = Rounds().one(obs(age=900, nova=None))
        self.assertEqual((A.NOTHING, True), (d.action, d.report))
        self.assertIn('Nova lists no compute service', d.reason)
        d = Rounds().one(obs(age=900, nova='down', disabled=True))
        self.assertEqual(A.NOTHING, d.action)
        self.assertIn('maintenance', d.reason)

    def test_flapping_host_is_held_then_acted_on_after_hold_down(self):
        rounds = Rounds()
        self.assertEqual(A.ALERT, rounds.one(obs(age=61)).action)
        back = rounds.one(obs(age=1), advance=100)
        self.assertEqual((S.HEALTHY, True), (back.state, back.report))
        self.assertIn('came back', back.reason)
        # Silent again, Nova down, 100 s after it came back: held.
        d = rounds.one(obs(age=61, nova='down'), advance=100)
        self.assertEqual((S.HELD, A.NOTHING, True),
                         (d.state, d.action, d.report))
        d = rounds.one(obs(age=161, nova='down'), advance=90)
        self.assertEqual((S.HELD, A.NOTHING, False),
                         (d.state, d.action, d.report))
        # 290 s: still held; 300 s: acted on.
        self.assertEqual(S.HELD, rounds.one(obs(age=251, nova='down'),
                                            advance=10).state)
        d = rounds.one(obs(age=261, nova='down'))
        self.assertEqual((S.FAILED, A.FENCE), (d.state, d.action))

    def test_fenced_host_is_not_fenced_again_while_silent(self):
        rounds = Rounds()
        self.assertEqual(A.FENCE, rounds.one(obs(age=70, nova='down'))
                         .action)
        for state in ('fenced', 'evacuating'):
            d = rounds.one(obs(age=80, nova='down', failure=state))
            self.assertEqual((S.FAILED, A.NOTHING), (d.state, d.action))

    def test_failed_fencing_is_tried_again(self):
        rounds = Rounds()
        rounds.one(obs(age=70, nova='down'))
        d = rounds.one(obs(age=80, nova='down', failure='fence_failed'))
        self.assertEqual(A.FENCE, d.action)
        self.assertIn('fencing failed before', d.reason)
        # ...but never while Nova says up.
        d = rounds.one(obs(age=90, nova='up', failure='fence_failed'))
        self.assertEqual(A.ALERT, d.action)

    def test_a_host_that_comes_back_undoes_nothing(self):
        rounds = Rounds()
        rounds.one(obs(age=70, nova='down'))
        # Agent beats again but Nova still reports it (forced) down: the
        # record stays open, nothing else happens.
        d = rounds.one(obs(age=1, nova='down', failure='fenced'))
        self.assertEqual((A.NOTHING, True), (d.action, d.report))
        self.assertIn('stays open', d.reason)
        d = rounds.one(obs(age=1, nova='down', failure='fenced'))
        self.assertEqual((A.NOTHING, False), (d.action, d.report))
        # An operator unset forced_down: the record is closed.
        d = rounds.one(obs(age=1, nova='up', failure='fenced'))
        self.assertEqual((S.HEALTHY, A.CLOSE), (d.state, d.action))
        # ...and a new silence right after is held (hold_down).
        d = rounds.one(obs(age=61, nova='down'))
        self.assertEqual((S.HELD, A.NOTHING), (d.state, d.action))

    def test_limits_from_conf(self):
        from ha_snapshot.tests import base
        conf = base.make_conf('/x', host_monitor__agent_timeout=42,
                              host_monitor__partition_min_hosts=3)
        limits = hs.Limits.from_conf(conf)
        self.assertEqual((42, 3, 300.0),
                         (limits.agent_timeout, limits.partition_min_hosts,
                          limits.hold_down))
