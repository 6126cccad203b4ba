"""The console scripts start with nothing on stderr: the deprecation
warnings eventlet and dnspython raise as oslo.messaging loads them are
filtered (ha_snapshot/cmd/__init__.py), other warnings are not."""

import subprocess
import sys

from ha_snapshot.tests import base



class QuietImportTest(base.TestCase):

    def run_python(self, code):
        return subprocess.run([sys.executable, '-c', code],
                              capture_output=True, text=True, timeout=120)

    def test_a_daemon_imports_silently(self):
        # NOTE: the agent's imports load oslo.messaging's server, hence
        # oslo.service's eventlet backend, eventlet and dnspython (the
        # demo's functional test checks the demo's whole run).
        r = self.run_python('import ha_snapshot.cmd.agent')
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertEqual('', r.stderr)

    def test_the_filters_are_narrow(self):
        # The same messages from another module, and other deprecation
        # warnings of the same category, still show.
        r = self.run_python(
            'import warnings, ha_snapshot.cmd\n'
            'warnings.warn("DSA is deprecated", UserWarning)\n'
            'warnings.warn("Eventlet is deprecated", Warning)\n'
            'warnings.warn_explicit("cryptography says", UserWarning, '
            '"dsa.py", 1, module="dns.dnssecalgs.dsa")\n'
            'warnings.warn_explicit("DSA is deprecated", UserWarning, '
            '"dsa.py", 1, module="dns.dnssecalgs.dsa")\n')
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertEqual(3, r.stderr.count('Warning: '), r.stderr)
        self.assertIn('cryptography says', r.stderr)
