"""ha-snapshot-status upgrade check, on real configuration files, a real
sqlite database and the installed plugins."""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

from oslo_config import cfg

from ha_snapshot.cmd import status
from ha_snapshot import conf as ha_conf
from ha_snapshot.db import migration
from ha_snapshot.tests import base


class StatusTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.db_url = 'sqlite:///' + self.path('ha.db')
        self.config = {
            'database': {'connection': self.db_url},
            'storage': {'backend_url': 'file://' + self.store_dir},
            # NOTE: only what this test installs; the default map also
            # names rebuild, which the Plugins check would want installed.
            'recovery': {'actions': 'qemu:restart'},
        }

    def write_conf(self) -> str:
        path = self.path('ha-snapshot.conf')
        with open(path, 'w') as f:
            for group, values in self.config.items():
                f.write('[%s]\n' % group)
                for name, value in values.items():
                    f.write('%s = %s\n' % (name, value))
        return path

    def migrate(self):
        conf = cfg.ConfigOpts()
        ha_conf.register_opts(conf)
        conf(['--config-file', self.write_conf()], project='ha-snapshot',
             default_config_files=[])
        migration.upgrade(conf)

    def check(self):
        """(exit code, {check name: (result code, details)})."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = status.main(['--config-file', self.write_conf(),
                                'upgrade', 'check', '--json'],
                               conf=cfg.ConfigOpts())
        doc = json.loads(out.getvalue())
        return code, {c['check']: (c['result'], c['details'])
                      for c in doc['checks']}

    def policy_file(self, text: str, name='policy.yaml') -> str:
        path = self.path(name)
        with open(path, 'w') as f:
            f.write(textwrap.dedent(text))
        self.config['oslo_policy'] = {'policy_file': path}
        return path

    def test_all_good(self):
        self.migrate()
        code, checks = self.check()
        self.assertEqual(0, code, checks)
        self.assertEqual({'Database schema', 'Storage backend', 'Plugins',
                          'Policy file'}, set(checks))
        self.assertIn(migration.head(), checks['Database schema'][1])

    def test_database_not_migrated(self):
        code, checks = self.check()
        self.assertEqual(2, code)
        result, details = checks['Database schema']
        self.assertEqual(2, result)
        self.assertIn('(empty)', details)
        self.assertIn('ha-snapshot-manage db sync', details)
        self.assertEqual(0, checks['Storage backend'][0])

    def test_database_unreadable(self):
        self.config['database']['connection'] = (
            'sqlite:///' + self.path('no', 'such', 'dir', 'ha.db'))
        code, checks = self.check()
        self.assertEqual(2, code)
        self.assertIn('[database] connection', checks['Database schema'][1])

    def test_unknown_storage_backend(self):
        self.migrate()
        self.config['storage']['backend_url'] = 'nosuch://bucket'
        code, checks = self.check()
        self.assertEqual(2, code)
        result, details = checks['Storage backend']
        self.assertEqual(2, result)
        self.assertIn('[storage] backend_url', details)
        self.assertIn('nosuch://bucket', details)

    def test_unknown_plugins(self):
        self.migrate()
        self.config['policy'] = {'name': 'clairvoyant'}
        self.config['recovery'] = {'action': 'pray',
                                   'actions': 'qemu:restart,libvirt:hope'}
        code, checks = self.check()
        self.assertEqual(2, code)
        result, details = checks['Plugins']
        self.assertIn("'clairvoyant'", details)
        self.assertIn("[recovery] action: no recovery action 'pray' is "
                      "installed", details)
        self.assertIn("[recovery] actions (libvirt): no recovery action "
                      "'hope'", details)
        self.assertNotIn("'restart'", details)

    def test_policy_file_valid(self):
        self.migrate()
        path = self.policy_file('''
            "project_member": "role:member and project_id:%(project_id)s"
            "ha_snapshot:servers:protect": "rule:project_member"
        ''')
        code, checks = self.check()
        self.assertEqual(0, code, checks)
        self.assertIn(path, checks['Policy file'][1])

    def test_policy_file_unknown_rule(self):
        self.migrate()
        self.policy_file('''
            "ha_snapshot:server:protect": "role:admin"
        ''')
        code, checks = self.check()
        self.assertEqual(1, code, checks)
        result, details = checks['Policy file']
        self.assertEqual(1, result)
        self.assertIn('ha_snapshot:server:protect', details)

    def test_policy_file_undefined_reference(self):
        self.migrate()
        self.policy_file('''
            "ha_snapshot:servers:protect": "rule:no_such_rule"
        ''')
        code, checks = self.check()
        self.assertEqual(2, code, checks)
        self.assertIn('no_such_rule', checks['Policy file'][1])

    def test_policy_file_broken_yaml(self):
        self.migrate()
        self.policy_file('"ha_snapshot:servers:protect": [unclosed\n')
        code, checks = self.check()
        self.assertEqual(2, code, checks)
        self.assertIn('cannot be read', checks['Policy file'][1])

    def test_policy_file_json(self):
        self.migrate()
        self.policy_file('{"ha_snapshot:servers:protect": "role:admin"}',
                         name='policy.json')
        code, checks = self.check()
        self.assertEqual(2, code, checks)
        self.assertIn('JSON-formatted', checks['Policy file'][1])

    def test_console_script(self):
        self.migrate()
        # NOTE: the console script pip installed beside this python.
        script = os.path.join(os.path.dirname(sys.executable),
                              'ha-snapshot-status')
        r = subprocess.run(
            [script, '--config-file', self.write_conf(), 'upgrade', 'check'],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        self.assertIn('Check: Database schema', r.stdout)
        self.assertIn('Result: Success', r.stdout)
