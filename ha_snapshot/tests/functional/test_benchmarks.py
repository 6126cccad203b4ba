"""Every benchmark runs (--quick) and prints its JSON with the keys its goal
names. Speed is not asserted here: benchmarks measure, tests check."""

import json
import os
import subprocess
import sys

import testtools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

GOAL_KEYS = {
    'cycle_cost': ['ratio'],
    'wire_ratio': ['incompressible', 'compressible'],
    'merge_throughput': ['ratio_vs_copy', 'scattered_MBps'],
    'restore_vs_chain': ['ratio'],
    'dedup': ['fraction_of_image'],
    'chunk_size': ['recommended_chunk_size'],
    'snapshot_stall': ['p50_ms', 'p99_ms', 'commit_mb_s'],
    'quiesce_stall': ['quiesced_p50_ms', 'quiesced_p99_ms',
                      'unquiesced_p99_ms', 'app_consistent'],
    'swift_merge': ['ratio_vs_sdk_put'],
    'transport': ['ratio'],
    'rpc_signing': ['ratio', 'sign_ms', 'verify_ms'],
    'rpo_under_load': ['rpo_p50_s', 'rpo_p99_s', 'rpo_max_s'],
    'api_load': ['p50_list_ms', 'p99_list_ms', 'p99_list_ms_baseline'],
    'scale': ['manager_cpu_fraction', 'manager_rss_mb',
              'agent_kb_per_instance', 'snapshot_rate_achieved'],
    'soak': ['durable_ratio', 'deltas_durable', 'manager_rss_mb_end',
             'agent_rss_mb_end'],
    # NOTE: takeover_seconds_p99 is checked in its test: it is null when
    # every instance of the killed replica was one of the VMs killed for
    # a recovery (left out of the takeover figure), which a short run
    # with few instances can draw.
    'manager_failover': ['rpo_seconds_max', 'deltas_acknowledged'],
    'live_restore': ['ratio_64G_vs_1G', 'recover_speedup_1G',
                     'recover_speedup_64G'],
    'manager_scale': ['total_cpu_cores', 'cores_per_200_instances',
                      'deltas_per_s_achieved', 'deltas_acknowledged'],
    'memory_snapshot': ['pause_p99_ms', 'save_p50_s', 'resume_seconds',
                        'cold_boot_first_record_seconds'],
}

# NOTE: CI time (issue 13): the slow ones run shorter than --quick, through
# their own options, still long enough for every key checked below (e.g.
# scale keeps its 20 VMs: agent_kb_per_instance is a difference of RSS;
# manager_failover's 16 s after the kill cover the takeover: a replica is
# dead 6 s after its last beat). api_load's --quick sets its own sizes, so
# it runs without it.
SHORTER = {
    'manager_failover': ('--quick', '--instances', '9', '--recoveries', '2',
                         '--warm', '4', '--after', '16'),
    'soak': ('--quick', '--instances', '6', '--deltas', '60', '--sample',
             '1'),
    'scale': ('--quick', '--instances', '8', '--interval', '2', '--window',
              '6'),
    'rpo_under_load': ('--quick', '--seconds', '5'),
    'api_load': ('--seconds', '2', '--clients', '20', '--idle', '5',
                 '--slow', '5'),
    'transport': ('--quick', '--rounds', '2', '--size-mib', '8'),
    'restore_vs_chain': ('--quick', '--deltas', '10'),
    'cycle_cost': ('--quick', '--repeat', '2'),
    'manager_scale': ('--quick', '--instances', '9', '--window', '6',
                      '--warm', '3', '--idle', '2'),
    'memory_snapshot': ('--quick', '--snapshots', '2', '--memory-mb', '256'),
}


class BenchmarkSmokeTestCase(testtools.TestCase):

    def _run(self, name):
        r = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'benchmarks', name + '.py')]
            + list(SHORTER.get(name, ('--quick',))),
            capture_output=True, text=True, timeout=600)
        self.assertEqual(0, r.returncode, r.stderr[-3000:])
        result = json.loads(r.stdout.strip().splitlines()[-1])
        for key in GOAL_KEYS[name]:
            self.assertIn(key, result)
            self.assertIsInstance(result[key], (int, float))
            self.assertGreater(result[key], 0)
        return result

    def test_cycle_cost(self):
        self._run('cycle_cost')

    def test_wire_ratio(self):
        self._run('wire_ratio')

    def test_merge_throughput(self):
        self._run('merge_throughput')

    def test_restore_vs_chain(self):
        self._run('restore_vs_chain')

    def test_live_restore(self):
        result = self._run('live_restore')
        for disk in ('1G', '64G'):
            self.assertTrue(result[disk]['live']['equals_restore_point'])

    def test_dedup(self):
        self._run('dedup')

    def test_chunk_size(self):
        self._run('chunk_size')

    def test_snapshot_stall(self):
        self._run('snapshot_stall')

    def test_quiesce_stall(self):
        result = self._run('quiesce_stall')
        # NOTE: every quiesced snapshot of the real guest froze it.
        self.assertEqual(result['snapshots_per_kind'],
                         result['app_consistent'])

    def test_swift_merge(self):
        self._run('swift_merge')

    def test_rpc_signing(self):
        self._run('rpc_signing')

    def test_transport(self):
        self._run('transport')

    def test_rpo_under_load(self):
        self._run('rpo_under_load')

    def test_scale(self):
        self._run('scale')

    def test_api_load(self):
        result = self._run('api_load')
        self.assertEqual(result['idle_clients'], result['idle_still_open'])

    def test_soak(self):
        result = self._run('soak')
        # NOTE: growth may be negative (RSS given back): a number, not > 0.
        for key in ('manager_kb_per_1000_deltas', 'agent_kb_per_1000_deltas',
                    'log_errors'):
            self.assertIsInstance(result[key], (int, float))

    def test_manager_failover(self):
        result = self._run('manager_failover')
        # NOTE: correctness, not speed: whatever the timing, a killed
        # replica loses nothing and nothing is merged twice.
        self.assertEqual(result['orphaned_instances'],
                         result['orphans_taken_over'])
        if result['orphans_taken_over']:
            self.assertIsInstance(result['takeover_seconds_p99'],
                                  (int, float))
        for key in ('restore_points_lost', 'duplicate_merges',
                    'database_store_mismatches'):
            self.assertEqual(0, result[key], key)
        # NOTE: recoveries during the failover: each one's restart run
        # once, one QEMU per VM. Whether one was caught in flight on the
        # killed replica depends on timing (the benchmark's report says):
        # not asserted here, where it could only flake.
        self.assertEqual(result['vms_killed'],
                         result['recoveries_succeeded'])
        for key in ('duplicate_recoveries', 'recoveries_without_restart',
                    'vms_running_twice', 'vms_not_running'):
            self.assertEqual(0, result[key], key)

    def test_manager_scale(self):
        # NOTE: 3 replicas, 9 simulated instances, a 6 s window.
        result = self._run('manager_scale')
        self.assertEqual(3, len(result['replicas']))
        # NOTE: at 10 s cycles a 6 s window holds at most one delta per
        # instance: a replica owning one or two may merge none in it, and
        # its CPU (counted in 10 ms clock ticks) be 0. The replicas
        # together merged some.
        for name, replica in result['replicas'].items():
            self.assertGreaterEqual(replica['cpu_cores'], 0, name)
            self.assertGreater(replica['rss_mb'], 0, name)
        self.assertGreater(result['total_cpu_cores'], 0)
        self.assertGreater(result['deltas_acknowledged'], 0)
        self.assertEqual(9, sum(r['owned']
                                 for r in result['replicas'].values()))
        self.assertEqual(0, result['log_errors'])

    def test_memory_snapshot(self):
        result = self._run('memory_snapshot')
        self.assertTrue(result['records_continue'], result)
