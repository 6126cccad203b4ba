"""The README's main job, ha-snapshot-demo, verifies itself end to end:
with real guests (the default) and with guest-less disks; a newcomer
reads its progress on stdout and nothing on stderr."""

import json
import os
import re
import subprocess
import sys

import fixtures
import testtools


class DemoTestCase(testtools.TestCase):

    def demo(self, *args):
        work = self.useFixture(fixtures.TempDir(rootdir='/var/tmp')).path
        r = subprocess.run(
            [sys.executable, '-m', 'ha_snapshot.cmd.demo', '--json',
             '--seconds', '8', '--workdir', work] + list(args),
            capture_output=True, text=True, timeout=420)
        lines = r.stdout.strip().splitlines()
        report = json.loads(lines[-1])
        if not report['verified']:
            # NOTE: what the demo printed and its log's warnings say why.
            log = os.path.join(work, 'demo.log')
            said = ''
            if os.path.exists(log):
                with open(log, errors='replace') as f:
                    said = ''.join(line for line in f if re.search(
                        r' (WARNING|ERROR|CRITICAL) ', line))
            self.fail('the demo did not verify: %s\nstdout:\n%s\n'
                      'stderr:\n%s\ndemo.log warnings:\n%s' % (
                          report, r.stdout[-4000:], r.stderr[-3000:],
                          said[-8000:]))
        self.assertEqual(0, r.returncode)
        # A newcomer reads progress on stdout, a line a second while the
        # workload runs, each VM's restore points, RPO and bytes shipped;
        # nothing on stderr (no third-party deprecation warnings).
        self.assertEqual('', r.stderr)
        status = [line for line in lines if re.match(
            r'-- +\d+ s  vm0: \d+ rp, RPO ([\d.]+ s|-), [\d.]+ (Ki|Mi)?B'
            r' / [\d.]+ (Ki|Mi)?B.* \| vm1: ', line)]
        self.assertGreaterEqual(len(status), 6, r.stdout)
        for key in ('restore_points', 'bytes_shipped_compressed',
                    'bytes_shipped_raw', 'bytes_shipped_memory_states',
                    'rpo_seconds_max',
                    'detect_seconds', 'recover_seconds'):
            self.assertIn(key, report)
        self.assertGreater(report['bytes_shipped_compressed'], 0)
        # NOTE: the workloads' data compresses well: raw is the larger.
        self.assertGreater(report['bytes_shipped_raw'],
                           report['bytes_shipped_compressed'])
        self.assertGreaterEqual(report['restore_points'], 2)
        self.assertLess(report['detect_seconds'], 10)
        self.assertEqual([], report['write_problems'])
        self.assertTrue(report['recovered_disk_equals_restore_point'])
        # NOTE: one writable disk per demo VM: the root alone.
        self.assertEqual(1, len(report['disks_protected']))
        self.assertRegex(report['disks_protected'][0], r' \(root\)$')
        return report

    def test_demo_verifies_real_guests(self):
        report = self.demo()
        self.assertTrue(report['guest_booted'])
        self.assertTrue(report['fsck_clean'])
        # The guests' agents froze them for application-consistent points.
        self.assertGreater(report['app_consistent_restore_points'], 0)
        self.assertEqual(0, report['records_lost'])
        self.assertEqual(0, report['transactions_lost'])
        self.assertGreater(report['records_durable_before_restore_point'],
                           0)
        self.assertGreaterEqual(report['records_in_restore_point'],
                                report['records_durable_before_restore_'
                                       'point'])
        self.assertEqual(0, report['records_torn'])
        # NOTE: a record appended but not yet fsynced at the snapshot may
        # be torn (crash consistency); the guest's own verify then says
        # so, and the guest goes on after it.
        self.assertRegex(report['recovered_guest_verify'],
                         r'^VERIFY (ok|bad) records=%d\b'
                         % report['records_in_restore_point'])
        self.assertEqual(report['records_in_restore_point']
                         + report['records_torn_after_durable'] + 1,
                         report['recovered_guest_first_record'])
        # The second VM kept its memory state: it resumed, no reboot.
        self.assertTrue(report['memory_state_restored'], report)
        self.assertGreater(report['bytes_shipped_memory_states'], 0)
        self.assertTrue(report['resumed_without_reboot'], report)
        self.assertGreater(report['resume_seconds'], 0)
        self.assertGreaterEqual(report['resumed_first_record'] - 1,
                                report['records_durable_at_memory_state'])

    def test_demo_verifies_without_guest(self):
        report = self.demo('--no-guest')
        self.assertGreater(report['bytes_written'], 0)
        self.assertNotIn('guest_booted', report)
        self.assertNotIn('memory_state_restored', report)
        self.assertEqual(0, report['bytes_shipped_memory_states'])
        self.assertEqual(0, report['app_consistent_restore_points'])
