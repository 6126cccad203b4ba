"""The README's main job, ha-snapshot-demo, verifies itself end to end."""

import json
import subprocess
import sys

import testtools


class DemoTestCase(testtools.TestCase):

    def test_demo_verifies(self):
        r = subprocess.run(
            [sys.executable, '-m', 'ha_snapshot.cmd.demo', '--json',
             '--seconds', '8'], capture_output=True, text=True, timeout=300)
        report = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertTrue(report['verified'], (report, r.stderr[-3000:]))
        self.assertEqual(0, r.returncode)
        for key in ('restore_points', 'bytes_written', 'bytes_shipped',
                    'rpo_seconds_max', 'detect_seconds', 'recover_seconds'):
            self.assertIn(key, report)
        self.assertGreaterEqual(report['restore_points'], 2)
        self.assertGreater(report['bytes_written'], 0)
        self.assertLess(report['detect_seconds'], 10)
        self.assertEqual([], report['write_problems'])
