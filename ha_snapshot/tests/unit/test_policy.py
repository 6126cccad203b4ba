"""Snapshot policies: fixed, adaptive (against a simulated instance), the
figures they decide from, and loading them by name through stevedore.
"""

import collections
import logging
import os
import random
import statistics
import time

import fixtures
from oslo_config import cfg

from ha_snapshot.conf import policy as policy_conf
from ha_snapshot import exception
from ha_snapshot import policy
from ha_snapshot.policy import adaptive
from ha_snapshot.policy import base as policy_base
from ha_snapshot.policy import fixed
from ha_snapshot.policy import metrics
from ha_snapshot.tests import base

MB = 1000 * 1000
INSTANCE = '6f1c9e7a-3d2b-4c44-9a51-0d6a1f3b2e10'


def make_conf(**overrides) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    policy_conf.register_opts(conf)
    conf([], project='ha-snapshot', default_config_files=[])
    for name, value in overrides.items():
        conf.set_override(name, value, group='policy')
    return conf


class Simulation:
    """One instance, one agent loop, shipping over a simulated link.

    Each cycle: the policy decides from the figures of the delta just made
    durable; the next snapshot starts ``interval`` after the previous one
    (not before the previous delta is durable: the agent is sequential);
    the delta holds what was written meanwhile and ships in
    ``latency + delta / throughput`` seconds. The achieved RPO of each new
    restore point is the age of the previous one's data when it becomes
    durable. Rates and throughput jitter by +-``jitter`` per cycle.
    """

    def __init__(self, pol, write_bps, throughput_bps, latency=0.5,
                 jitter=0.1, seed=7):
        self.policy = pol
        self.write_bps = write_bps
        self.throughput_bps = throughput_bps
        self.latency = latency
        self.jitter = jitter
        self.rnd = random.Random(seed)
        self.started = 1000.0         # the baseline snapshot
        self.ship = latency
        self.delta = 0
        self.durable = self.started + self.ship
        self.measured_rate = None     # no block statistics yet
        self.rpos = []
        self.intervals = []
        self.decisions = []

    def figures(self, **host) -> metrics.Figures:
        return metrics.Figures(
            now=self.durable, write_rate_bps=self.measured_rate,
            last_delta_bytes=self.delta, last_ship_seconds=self.ship,
            last_durable_at=self.durable, **host)

    def run(self, cycles, **host):
        for _ in range(cycles):
            decision = self.policy.next_interval(self.figures(**host))
            self.decisions.append(decision)
            start = max(self.started + decision.interval_seconds,
                        self.durable)
            interval = start - self.started
            rate = self.write_bps * self.wobble()
            self.delta = int(rate * interval)
            self.ship = (self.latency + self.delta
                         / (self.throughput_bps * self.wobble()))
            durable = start + self.ship
            self.rpos.append(durable - self.started)
            self.intervals.append(interval)
            self.started, self.durable = start, durable
            self.measured_rate = rate
        return self

    def wobble(self):
        return self.rnd.uniform(1 - self.jitter, 1 + self.jitter)


def p99(values):
    return statistics.quantiles(values, n=100, method='inclusive')[98]


class PolicyTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))

    def adaptive(self, **overrides):
        return adaptive.AdaptivePolicy(make_conf(**overrides), INSTANCE)


class FixedPolicyTest(PolicyTestCase):

    def test_always_the_configured_interval(self):
        pol = fixed.FixedPolicy(make_conf(), INSTANCE)
        sim = Simulation(pol, 10 * MB, 50 * MB).run(5)
        self.assertEqual([60.0] * 5,
                         [d.interval_seconds for d in sim.decisions])
        busy = pol.next_interval(sim.figures(host_cpu_percent=100.0,
                                             host_load_ok=False))
        self.assertEqual(60.0, busy.interval_seconds)
        self.assertEqual(
            30.0, fixed.FixedPolicy(make_conf(interval=30), INSTANCE)
            .next_interval(metrics.Figures(now=1.0)).interval_seconds)

    def test_misses_the_target_the_simulation_sets(self):
        # The control for AdaptivePolicyTest: snapshotting every
        # rpo_target seconds misses it by the shipping time.
        sim = Simulation(fixed.FixedPolicy(make_conf(interval=60), INSTANCE),
                         10 * MB, 50 * MB).run(50)
        self.assertGreater(p99(sim.rpos), 70.0)

    def test_every_decision_is_logged_with_its_inputs(self):
        pol = fixed.FixedPolicy(make_conf(), INSTANCE)
        decision = pol.next_interval(metrics.Figures(
            now=5.0, write_rate_bps=1234.5, app_figures={'db.dirty': 7.0}))
        self.assertEqual(1234.5, decision.inputs['write_rate_bps'])
        self.assertEqual(7.0, decision.inputs['app.db.dirty'])
        self.assertIn('Snapshot policy fixed, instance %s: next snapshot '
                      '60.0 s after the latest (fixed interval); inputs: '
                      % INSTANCE, self.log.output)
        self.assertIn('app.db.dirty=7', self.log.output)
        self.assertIn('write_rate_bps=1234', self.log.output)


class AdaptivePolicyTest(PolicyTestCase):

    def test_converges_under_the_rpo_target(self):
        # 10 MB/s of writes over a 50 MB/s link with 0.5 s of latency.
        sim = Simulation(self.adaptive(), 10 * MB, 50 * MB).run(200)
        converged = sim.rpos[5:]
        self.assertLessEqual(p99(converged), 60.0)
        self.assertLessEqual(max(sim.rpos), 60.0)
        # ... and not by snapshotting needlessly often: the optimum for
        # a 10% margin is I + 0.5 + I / 5 = 54, I = 44.6 s.
        self.assertGreater(statistics.median(sim.intervals[5:]), 40.0)
        self.assertGreater(statistics.median(converged), 50.0)
        self.assertIn('keeping the RPO under target', sim.decisions[-1].reason)

    def test_converges_when_shipping_is_slow(self):
        # Shipping takes half as long as writing: I + I / 2 <= 54.
        sim = Simulation(self.adaptive(), 10 * MB, 20 * MB,
                         latency=2.0).run(200)
        self.assertLessEqual(p99(sim.rpos[5:]), 60.0)
        self.assertGreater(statistics.median(sim.intervals[5:]), 30.0)

    def test_follows_a_change_of_write_rate(self):
        sim = Simulation(self.adaptive(rpo_target=120, max_interval=900),
                         2 * MB, 50 * MB).run(50)
        quiet = statistics.median(sim.intervals[-20:])
        sim.write_bps = 30 * MB
        sim.run(100)
        self.assertLessEqual(p99(sim.rpos[-95:]), 120.0)
        self.assertLess(statistics.median(sim.intervals[-20:]), quiet)

    def test_first_decision_without_measurements(self):
        decision = self.adaptive().next_interval(metrics.Figures(now=1.0))
        self.assertEqual(27.0, decision.interval_seconds)  # (60 - 6) / 2
        self.assertIn('no shipping measured yet', decision.reason)

    def test_unknown_write_rate_is_cautious(self):
        pol = self.adaptive()
        decision = pol.next_interval(metrics.Figures(
            now=100.0, last_delta_bytes=10 * MB, last_ship_seconds=4.0,
            last_durable_at=100.0))
        self.assertEqual(27.0, decision.interval_seconds)
        self.assertIn('write rate or delta sizes unknown', decision.reason)
        self.assertEqual(4.0, decision.inputs['rpo_now_seconds'])
        # A shipping time longer than half the budget is taken off whole.
        decision = self.adaptive().next_interval(metrics.Figures(
            now=100.0, last_delta_bytes=10 * MB, last_ship_seconds=40.0,
            last_durable_at=100.0))
        self.assertEqual(60.0 - 6.0 - 40.0, decision.interval_seconds)

    def test_backs_off_under_overload_within_the_target(self):
        sim = Simulation(self.adaptive(), 10 * MB, 50 * MB,
                         jitter=0).run(20)
        pol = sim.policy
        # The figures of the latest delta stay the same from here on.
        normal = pol.next_interval(sim.figures())
        for host in ({'host_cpu_percent': 90.0},
                     {'host_iowait_percent': 30.0},
                     {'host_load_ok': False}):
            busy = pol.next_interval(sim.figures(**host))
            self.assertGreater(busy.interval_seconds,
                               normal.interval_seconds)
            self.assertEqual('moderate', busy.inputs['overload'])
            self.assertLessEqual(busy.inputs['predicted_rpo_seconds'],
                                 60.0 + 1e-9)
            self.assertIn('within the RPO target', busy.reason)
        # Back to normal load: back to the RPO-keeping interval.
        again = pol.next_interval(sim.figures())
        self.assertAlmostEqual(normal.interval_seconds,
                               again.interval_seconds, places=6)

    def converged(self, **overrides):
        """A policy past its start-up, on steady figures, and its
        RPO-keeping interval."""
        sim = Simulation(self.adaptive(**overrides), 10 * MB, 50 * MB,
                         jitter=0).run(20)
        normal = sim.policy.next_interval(sim.figures())
        return sim, normal

    def test_severe_overload_of_ours_backs_off_up_to_the_cap(self):
        sim, normal = self.converged(max_interval=300)
        keep = normal.inputs['interval_keep']
        # All of the load is ours: the full backoff_factor per decision,
        # up to backoff_max_stretch (4) times the RPO-keeping interval.
        ours = {'host_cpu_percent': 99.0, 'host_own_cpu_percent': 99.0}
        decisions = [sim.policy.next_interval(sim.figures(**ours))
                     for _ in range(4)]
        intervals = [d.interval_seconds for d in decisions]
        self.assertAlmostEqual(keep * 2, intervals[0], places=6)
        self.assertAlmostEqual(keep * 4, intervals[1], places=6)
        self.assertEqual([keep * 4] * 2, intervals[2:])
        self.assertIn('RPO target given up', decisions[-1].reason)
        self.assertIn('100% ours', decisions[-1].reason)
        self.assertEqual('severe', decisions[-1].inputs['overload'])
        self.assertEqual(1.0, decisions[-1].inputs['own_share'])
        # A larger cap: up to max_interval, never past it.
        sim, normal = self.converged(max_interval=300,
                                     backoff_max_stretch=100)
        intervals = [sim.policy.next_interval(sim.figures(**ours))
                     .interval_seconds for _ in range(5)]
        self.assertEqual([300.0] * 2, intervals[-2:])
        # A cap of 1: the target is never given up.
        sim, normal = self.converged(backoff_max_stretch=1)
        busy = [sim.policy.next_interval(sim.figures(**ours))
                for _ in range(3)]
        for d in busy:
            self.assertLessEqual(d.inputs['predicted_rpo_seconds'],
                                 60.0 + 1e-9)

    def test_severe_overload_mostly_not_ours_keeps_the_target(self):
        # The old rule gave up the target here: 99 % busy host, but the
        # agent uses 10 % of the CPU time (a tenth of the load).
        sim, normal = self.converged()
        others = {'host_cpu_percent': 99.0, 'host_own_cpu_percent': 9.9}
        decisions = [sim.policy.next_interval(sim.figures(**others))
                     for _ in range(6)]
        for d in decisions:
            self.assertEqual('severe', d.inputs['overload'])
            self.assertAlmostEqual(0.1, d.inputs['own_share'])
            self.assertLessEqual(d.interval_seconds,
                                 d.inputs['interval_limit'] + 1e-9)
            self.assertLessEqual(d.inputs['predicted_rpo_seconds'],
                                 60.0 + 1e-9)
            self.assertIn('mostly not ours', d.reason)
            self.assertIn('within the RPO target', d.reason)
            self.assertNotIn('given up', d.reason)
        self.assertGreaterEqual(decisions[0].interval_seconds,
                                normal.interval_seconds)
        # An I/O wait overload is judged by our share of the disk bytes.
        io = sim.policy.next_interval(sim.figures(
            host_iowait_percent=60.0, host_own_cpu_percent=80.0,
            host_own_io_percent=5.0))
        self.assertIn('mostly not ours', io.reason)
        io = sim.policy.next_interval(sim.figures(
            host_iowait_percent=60.0, host_own_cpu_percent=0.0,
            host_own_io_percent=70.0))
        self.assertIn('RPO target given up', io.reason)
        self.assertEqual(0.7, io.inputs['own_share'])

    def test_significant_share_is_an_option(self):
        others = {'host_cpu_percent': 99.0, 'host_own_cpu_percent': 27.0}
        sim, _normal = self.converged()
        self.assertIn('mostly not ours', sim.policy.next_interval(
            sim.figures(**others)).reason)
        sim, _normal = self.converged(host_own_share_severe=25)
        self.assertIn('RPO target given up', sim.policy.next_interval(
            sim.figures(**others)).reason)
        # 0: every severe overload gives up the target, ours or not.
        sim, _normal = self.converged(host_own_share_severe=0)
        self.assertIn('RPO target given up', sim.policy.next_interval(
            sim.figures(host_cpu_percent=99.0,
                        host_own_cpu_percent=0.0)).reason)

    def test_backoff_in_proportion_to_our_share(self):
        # Two thirds of a severe load ours: each decision stretches by
        # 1 + (2 - 1) * 2/3, not by the whole backoff_factor.
        sim, normal = self.converged(max_interval=300)
        keep = normal.inputs['interval_keep']
        busy = sim.policy.next_interval(sim.figures(
            host_cpu_percent=99.0, host_own_cpu_percent=66.0))
        self.assertAlmostEqual(keep * (1 + 2 / 3), busy.interval_seconds,
                               places=6)
        self.assertIn('RPO target given up', busy.reason)
        # A moderate overload that is none of ours does not stretch at
        # all: backing off would relieve nothing.
        sim, normal = self.converged()
        busy = sim.policy.next_interval(sim.figures(
            host_cpu_percent=90.0, host_own_cpu_percent=0.0))
        self.assertEqual('moderate', busy.inputs['overload'])
        self.assertAlmostEqual(normal.interval_seconds,
                               busy.interval_seconds, places=6)

    def test_unmeasured_share_counts_as_ours(self):
        sim, normal = self.converged(max_interval=300)
        severe = sim.policy.next_interval(sim.figures(
            host_iowait_percent=60.0))
        self.assertIn('RPO target given up', severe.reason)
        self.assertIn('all assumed ours', severe.reason)
        self.assertEqual('severe', severe.inputs['overload'])
        self.assertAlmostEqual(normal.inputs['interval_keep'] * 2,
                               severe.interval_seconds, places=6)

    def test_idle_instance_stretches_toward_max_interval(self):
        sim = Simulation(self.adaptive(), 10 * MB, 50 * MB, jitter=0)
        sim.run(20)
        normal = sim.intervals[-1]
        sim.write_bps = 0
        sim.run(6)
        self.assertEqual([600.0, 600.0], sim.intervals[-2:])
        stretched = sim.intervals[-6:-2]
        self.assertEqual(sorted(stretched), stretched)
        self.assertGreater(stretched[0], normal)
        self.assertIn('idle', sim.decisions[-1].reason)
        # Writes resume: the very next decision keeps the target again.
        sim.write_bps = 10 * MB
        sim.run(4)
        self.assertLess(sim.decisions[-3].interval_seconds, 60.0)
        self.assertLessEqual(max(sim.rpos[-2:]), 60.0)

    def test_not_idle_before_the_first_restore_point(self):
        # Just after the baseline snapshot, before it is durable: a zero
        # rate over that short moment does not stretch the interval.
        pol = self.adaptive()
        first = pol.next_interval(metrics.Figures(
            now=10.0, write_rate_bps=0.0, last_delta_bytes=0,
            last_ship_seconds=0.0))
        self.assertEqual(27.0, first.interval_seconds)  # (60 - 6) / 2
        self.assertNotIn('idle', first.reason)
        # Once a restore point is durable, no writes is idle.
        idle = pol.next_interval(metrics.Figures(
            now=20.0, write_rate_bps=0.0, last_delta_bytes=0,
            last_ship_seconds=0.5, last_durable_at=19.0))
        self.assertIn('idle', idle.reason)
        self.assertGreater(idle.interval_seconds, first.interval_seconds)

    def test_every_decision_is_logged(self):
        sim = Simulation(self.adaptive(), 10 * MB, 50 * MB).run(3)
        lines = [ln for ln in self.log.output.splitlines()
                 if 'Snapshot policy adaptive, instance %s' % INSTANCE in ln]
        self.assertEqual(3, len(lines))
        for key in ('write_rate_bps=', 'last_ship_seconds=',
                    'expected_ship_seconds=', 'predicted_rpo_seconds=',
                    'rpo_target=60', 'host_cpu_percent=',
                    'host_own_cpu_percent=', 'own_share=', 'overload='):
            self.assertIn(key, lines[-1])
        self.assertEqual(set(sim.decisions[-1].inputs),
                         set(sim.decisions[0].inputs))

    def test_inconsistent_options_are_refused(self):
        for overrides, option in (
                ({'min_interval': 90}, 'min_interval'),
                ({'max_interval': 30}, 'max_interval'),
                ({'host_cpu_high': 99, 'host_cpu_severe': 95},
                 'host_cpu_severe'),
                ({'host_iowait_high': 60}, 'host_iowait_severe')):
            e = self.assertRaises(exception.ConfigurationError,
                                  self.adaptive, **overrides)
            self.assertIn('[policy] %s' % option, str(e))


# --- figures -----------------------------------------------------------------

CpuTimes = collections.namedtuple(
    'CpuTimes', 'user nice system idle iowait irq softirq steal guest '
    'guest_nice')
DiskIO = collections.namedtuple('DiskIO', 'read_bytes write_bytes busy_time')


class FakeHost:
    """Counters that tests move forward by hand."""

    def __init__(self):
        self.clock = 100.0
        self.cpu = CpuTimes(10, 0, 10, 80, 0, 0, 0, 0, 0, 0)
        self.disks = {'sda': DiskIO(0, 0, 0), 'sda1': DiskIO(0, 0, 0)}
        self.load = (0.5, 0.5, 0.5)
        self.own_cpu = 0.0
        self.own_io = 0

    def disk_io(self, perdisk):
        if perdisk:
            return dict(self.disks)
        whole = self.disks['sda']
        return DiskIO(whole.read_bytes, whole.write_bytes, whole.busy_time)

    def sampler(self, window=0.0):
        return metrics.HostSampler(
            clock=lambda: self.clock, cpu_times=lambda: self.cpu,
            disk_io=self.disk_io, loadavg=lambda: self.load, cpu_count=2,
            window=window, own_cpu=lambda: self.own_cpu,
            own_io=lambda: self.own_io)

    def tick(self, seconds, busy, iowait=0.0, own=0.0, disk=0, own_io=0):
        """``seconds`` pass; of the CPU time of both CPUs ``busy`` and
        ``iowait`` are fractions (the rest idle), ``own`` ours."""
        spent = 2 * seconds
        c = self.cpu
        self.cpu = c._replace(user=c.user + busy * spent,
                              iowait=c.iowait + iowait * spent,
                              idle=c.idle + (1 - busy - iowait) * spent)
        self.own_cpu += own * spent
        self.own_io += own_io
        sda = self.disks['sda']
        self.disks = dict(self.disks, sda=sda._replace(
            write_bytes=sda.write_bytes + disk))
        self.clock += seconds


class HostSamplerTest(base.TestCase):

    def test_deltas_between_calls(self):
        host = FakeHost()
        sampler = host.sampler()
        host.clock += 10
        # 40 s of CPU time over 2 CPUs: 10 busy (user 5 + system 5),
        # 10 iowait, 20 idle; guest time is already in user.
        host.cpu = CpuTimes(15, 0, 15, 100, 10, 0, 0, 0, 3, 0)
        host.disks = {'sda': DiskIO(10 * MB, 50 * MB, 9000),
                      'sda1': DiskIO(10 * MB, 50 * MB, 9000)}
        sample = sampler.sample()
        self.assertEqual(25.0, sample.cpu_percent)
        self.assertEqual(25.0, sample.iowait_percent)
        self.assertEqual(1 * MB, sample.disk_read_bps)
        self.assertEqual(5 * MB, sample.disk_write_bps)
        self.assertEqual(90.0, sample.disk_busy_percent)
        self.assertEqual(0.25, sample.load_per_cpu)
        self.assertTrue(sample.load_ok)
        figures = metrics.Figures(now=1.0, **sample.figures())
        self.assertEqual((25.0, 25.0, True), (
            figures.host_cpu_percent, figures.host_iowait_percent,
            figures.host_load_ok))

        host.clock += 10
        host.cpu = CpuTimes(35, 0, 35, 100, 10, 0, 0, 0, 3, 0)
        host.load = (5.0, 1.0, 1.0)
        sample = sampler.sample()
        self.assertEqual(100.0, sample.cpu_percent)
        self.assertEqual(0.0, sample.iowait_percent)
        self.assertEqual(0.0, sample.disk_write_bps)
        self.assertFalse(sample.load_ok)   # 2.5 per CPU

        # No time passed: the previous sample again, no division by zero.
        self.assertIs(sample, sampler.sample())

    def test_window_smooths_a_busy_moment(self):
        host = FakeHost()
        sampler = host.sampler(window=10.0)
        single = host.sampler(window=0.0)
        for _ in range(9):
            host.tick(1, busy=0.2)
            sampler.sample()
            single.sample()
        host.tick(1, busy=1.0)
        # One busy second among ten: no overload in the window...
        smooth = sampler.sample()
        self.assertAlmostEqual(28.0, smooth.cpu_percent)
        self.assertEqual(10.0, smooth.window_seconds)
        # ... where the previous sample alone says 100 %.
        self.assertEqual(100.0, single.sample().cpu_percent)
        # Older readings leave the window: ten busy seconds are seen.
        for _ in range(10):
            host.tick(1, busy=1.0)
            sample = sampler.sample()
        self.assertEqual(100.0, sample.cpu_percent)
        self.assertEqual(10.0, sample.window_seconds)

    def test_own_share_of_cpu_and_disk(self):
        host = FakeHost()
        sampler = host.sampler(window=5.0)
        host.tick(5, busy=0.9, own=0.3, disk=100 * MB, own_io=25 * MB)
        sample = sampler.sample()
        self.assertAlmostEqual(90.0, sample.cpu_percent)
        self.assertAlmostEqual(30.0, sample.own_cpu_percent)
        self.assertAlmostEqual(25.0, sample.own_io_percent)
        figures = metrics.Figures(now=1.0, **sample.figures())
        self.assertAlmostEqual(30.0, figures.host_own_cpu_percent)
        self.assertEqual(5.0, figures.host_window_seconds)
        # No disk traffic at all: no share of it.
        host.tick(5, busy=0.5, own=0.1)
        self.assertIsNone(sampler.sample().own_io_percent)
        # Counters we cannot read: unknown, not zero.
        blind = metrics.HostSampler(
            clock=lambda: host.clock, cpu_times=lambda: host.cpu,
            disk_io=host.disk_io, loadavg=lambda: host.load, cpu_count=2,
            own_cpu=lambda: None, own_io=lambda: None)
        host.tick(1, busy=0.5)
        self.assertIsNone(blind.sample().own_cpu_percent)

    def test_busy_disk_is_not_ok(self):
        host = FakeHost()
        sampler = host.sampler()
        host.clock += 1
        host.cpu = CpuTimes(11, 0, 10, 81, 0, 0, 0, 0, 0, 0)
        host.disks = {'sda': DiskIO(0, 0, 990), 'sda1': DiskIO(0, 0, 0)}
        self.assertFalse(sampler.sample().load_ok)

    def test_real_host_without_blocking(self):
        sampler = metrics.HostSampler()
        started = time.monotonic()
        samples = [sampler.sample() for _ in range(3)]
        self.assertLess(time.monotonic() - started, 0.5)
        # Our own CPU time is read from this process.
        sum(i * i for i in range(200000))
        samples.append(sampler.sample())
        self.assertIsNotNone(samples[-1].own_cpu_percent)
        for s in samples:
            self.assertTrue(0.0 <= s.cpu_percent <= 100.0)
            self.assertTrue(s.own_cpu_percent is None
                            or 0.0 <= s.own_cpu_percent <= 100.0)
            self.assertTrue(0.0 <= s.iowait_percent <= 100.0)
            self.assertGreaterEqual(s.disk_write_bps, 0.0)


class WriteRateMeterTest(base.TestCase):

    def test_rate_from_counter_deltas(self):
        meter = metrics.WriteRateMeter()
        self.assertIsNone(meter.update(1000, 10.0))
        self.assertEqual(500.0, meter.update(6000, 20.0))
        self.assertEqual(0.0, meter.update(6000, 30.0))
        # QEMU restarted: its counter starts again from zero.
        self.assertIsNone(meter.update(100, 40.0))
        self.assertEqual(10.0, meter.update(200, 50.0))


# --- application metrics plugins ------------------------------------------

def good_app_metrics(instance_uuid):
    return {'queue_depth': 7, 'label': 'not a number', 'dirty': 1.5}


def broken_app_metrics(instance_uuid):
    raise RuntimeError('the guest agent is not answering')


class NotAPolicy:
    def __init__(self, conf, instance_uuid):
        pass


def _entry_points_installed(group, name):
    import importlib.metadata
    return any(ep.name == name
               for ep in importlib.metadata.entry_points(group=group))


class PluginDistribution(fixtures.Fixture):
    """A throw-away installed distribution declaring entry points.

    Until setup.cfg declares ``fixed`` and ``adaptive``, this adds them
    too, so stevedore loads them the way it will once installed.
    """

    def __init__(self, tmp):
        super().__init__()
        self.tmp = tmp

    def _setUp(self):
        path = os.path.join(self.tmp, 'site')
        info = os.path.join(path, 'ha_snapshot_test_plugins-0.dist-info')
        os.makedirs(info)
        with open(os.path.join(info, 'METADATA'), 'w') as f:
            f.write('Metadata-Version: 2.1\nName: ha-snapshot-test-plugins'
                    '\nVersion: 0\n')
        mod = 'ha_snapshot.tests.unit.test_policy'
        lines = ['[%s]' % policy.NAMESPACE,
                 'broken = ha_snapshot.tests.unit.no_such_module:Policy',
                 'notapolicy = %s:NotAPolicy' % mod]
        for name, target in (('fixed', 'ha_snapshot.policy.fixed:'
                                       'FixedPolicy'),
                             ('adaptive', 'ha_snapshot.policy.adaptive:'
                                          'AdaptivePolicy')):
            if not _entry_points_installed(policy.NAMESPACE, name):
                lines.append('%s = %s' % (name, target))
        lines += ['[%s]' % metrics.APP_METRICS_NAMESPACE,
                  'good = %s:good_app_metrics' % mod,
                  'broken = %s:broken_app_metrics' % mod,
                  'missing = ha_snapshot.tests.unit.no_such_module:plugin']
        with open(os.path.join(info, 'entry_points.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        self.useFixture(fixtures.PythonPathEntry(path))


class AppMetricsTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))

    def test_failing_plugin_is_logged_and_ignored(self):
        app = metrics.AppMetrics([
            ('broken', broken_app_metrics),
            ('good', good_app_metrics),
            ('notadict', lambda uuid: [1, 2]),
        ])
        self.assertEqual({'good.queue_depth': 7.0, 'good.dirty': 1.5},
                         app.collect(INSTANCE))
        self.assertIn('plugin broken failed for instance %s and is ignored'
                      % INSTANCE, self.log.output)
        self.assertIn('the guest agent is not answering', self.log.output)
        self.assertIn("label='not a number' is not a finite number",
                      self.log.output)
        self.assertIn('plugin notadict returned list', self.log.output)

    def test_plugins_from_entry_points(self):
        self.useFixture(PluginDistribution(self.tmp))
        app = metrics.AppMetrics.from_entry_points()
        self.assertEqual(['broken', 'good'], sorted(n for n, _ in app.plugins))
        figures = app.collect(INSTANCE)
        self.assertEqual({'good.queue_depth': 7.0, 'good.dirty': 1.5},
                         figures)
        self.assertIn('plugin missing (ha_snapshot.tests.unit.no_such_module'
                      ':plugin) failed to import and is ignored',
                      self.log.output)
        # The figures reach the decision and its log line.
        pol = adaptive.AdaptivePolicy(make_conf(), INSTANCE)
        decision = pol.next_interval(metrics.Figures(now=1.0,
                                                     app_figures=figures))
        self.assertEqual(7.0, decision.inputs['app.good.queue_depth'])
        self.assertIn('app.good.queue_depth=7', self.log.output)

        only = metrics.AppMetrics.from_entry_points(names=['good'])
        self.assertEqual(['good'], [n for n, _ in only.plugins])


class LoadPolicyTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(PluginDistribution(self.tmp))

    def test_load_by_name(self):
        conf = make_conf()
        pol = policy.load_policy(conf, INSTANCE)
        self.assertIsInstance(pol, adaptive.AdaptivePolicy)
        self.assertEqual(INSTANCE, pol.instance_uuid)
        conf.set_override('name', 'fixed', group='policy')
        self.assertIsInstance(policy.load_policy(conf, INSTANCE),
                              fixed.FixedPolicy)
        self.assertIsInstance(
            policy.load_policy(conf, INSTANCE, name='adaptive'),
            policy_base.Policy)
        self.assertIn('fixed', policy.available_policies())
        self.assertIn('adaptive', policy.available_policies())

    def test_unknown_name_is_one_clear_error(self):
        conf = make_conf(name='fancy')
        e = self.assertRaises(policy.PolicyNotFound, policy.load_policy,
                              conf, INSTANCE)
        self.assertIsInstance(e, exception.HaSnapshotException)
        message = str(e)
        self.assertIn("No snapshot policy named 'fancy'", message)
        self.assertIn('no such plugin in the ha_snapshot.policy namespace',
                      message)
        self.assertIn('Set [policy] name to one of:', message)
        self.assertIn('adaptive', message)
        self.assertIn('fixed', message)

    def test_broken_plugins_are_the_same_error(self):
        conf = make_conf()
        e = self.assertRaises(policy.PolicyNotFound, policy.load_policy,
                              conf, INSTANCE, name='broken')
        self.assertIn('no_such_module:Policy failed to import', str(e))
        e = self.assertRaises(policy.PolicyNotFound, policy.load_policy,
                              conf, INSTANCE, name='notapolicy')
        self.assertIn('is not a subclass of ha_snapshot.policy.base.Policy',
                      str(e))

    def test_bad_options_are_not_hidden(self):
        conf = make_conf(min_interval=100)
        self.assertRaises(exception.ConfigurationError, policy.load_policy,
                          conf, INSTANCE)
