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
    'merge_throughput': ['ratio_vs_copy'],
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
    'manager_failover': ['takeover_seconds_p99', 'rpo_seconds_max',
                         'deltas_acknowledged'],
}


class BenchmarkSmokeTestCase(testtools.TestCase):

    def _run(self, name):
        r = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'benchmarks', name + '.py'),
             '--quick'], capture_output=True, text=True, timeout=600)
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
        for key in ('restore_points_lost', 'duplicate_merges',
                    'database_store_mismatches'):
            self.assertEqual(0, result[key], key)
