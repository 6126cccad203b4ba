"""The policy defaults: every rule, every persona; the sample generator."""

import os
import subprocess

import fixtures

from oslo_config import cfg

from ha_snapshot.api import context as api_context
from ha_snapshot.api import policy
from ha_snapshot import policies
from ha_snapshot.tests import base

# NOTE: (project reader, project member, member of another project,
# admin of another project) on a server of project P.
MATRIX = {
    'ha_snapshot:servers:list': (True, True, False, True),
    'ha_snapshot:servers:list:all_projects': (False, False, False, True),
    'ha_snapshot:servers:show': (True, True, False, True),
    'ha_snapshot:servers:protect': (False, True, False, True),
    'ha_snapshot:servers:protect:host': (False, False, False, True),
    'ha_snapshot:servers:unprotect': (False, True, False, True),
    'ha_snapshot:restore_points:list': (True, True, False, True),
    'ha_snapshot:recoveries:create': (False, True, False, True),
    'ha_snapshot:recoveries:list': (True, True, False, True),
    'ha_snapshot:recoveries:show': (True, True, False, True),
    'ha_snapshot:alarms:create': (False, True, False, True),
    'ha_snapshot:metrics:show': (False, False, False, True),
    'ha_snapshot:manager:list': (False, False, False, True),
    'ha_snapshot:host_failure:list': (False, False, False, True),
}


class PolicyTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        conf = cfg.ConfigOpts()
        conf([], project='ha-snapshot', default_config_files=[])
        self.enforcer = policy.make_enforcer(conf)

    def ctx(self, project, *roles):
        return api_context.RequestContext(
            user_id='u', project_id=project, roles=list(roles),
            enforcer=self.enforcer)

    def test_every_documented_rule_is_in_the_matrix(self):
        documented = {r.name for r in policies.list_rules()
                      if r.name.startswith('ha_snapshot:')}
        self.assertEqual(set(MATRIX), documented)

    def test_personas(self):
        personas = (self.ctx('P', 'reader'),
                    self.ctx('P', 'member', 'reader'),
                    self.ctx('Q', 'member', 'reader'),
                    self.ctx('Q', 'admin', 'member', 'reader'))
        got = {rule: tuple(c.can(rule, {'project_id': 'P'}, fatal=False)
                           for c in personas)
               for rule in MATRIX}
        self.assertEqual(MATRIX, got)

    def test_refusal_names_the_rule(self):
        e = self.assertRaises(
            Exception, self.ctx('P', 'reader').can,
            'ha_snapshot:servers:protect', {'project_id': 'P'})
        self.assertEqual(403, e.status_int)
        self.assertIn('ha_snapshot:servers:protect', e.detail)

    def test_policy_file_changes_apply_within_the_check_interval(self):
        path = self.useFixture(fixtures.TempDir()).join('policy.yaml')
        conf = cfg.ConfigOpts()
        conf([], project='ha-snapshot', default_config_files=[])
        policy.set_defaults(conf)
        conf.set_override('policy_file', path, group='oslo_policy')
        now = [100.0]
        self.enforcer = policy.make_enforcer(conf, clock=lambda: now[0])
        rule, target = 'ha_snapshot:servers:list', {'project_id': 'P'}
        reader = self.ctx('P', 'reader')
        self.assertTrue(reader.can(rule, target, fatal=False))
        with open(path, 'w') as f:
            f.write('"%s": "!"\n' % rule)
        # Not looked for again within the interval...
        now[0] += policy.RELOAD_CHECK_SECONDS / 2
        self.assertTrue(reader.can(rule, target, fatal=False))
        # ...and applied once it has passed.
        now[0] += policy.RELOAD_CHECK_SECONDS
        self.assertFalse(reader.can(rule, target, fatal=False))
        # A clock that went back looks again too.
        os.unlink(path)
        now[0] -= 10 * policy.RELOAD_CHECK_SECONDS
        self.enforcer.load_rules()
        self.assertEqual(now[0], self.enforcer._checked_at)

    def test_sample_generator(self):
        out = subprocess.run(
            ['oslopolicy-sample-generator', '--namespace', 'ha_snapshot'],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(0, out.returncode, out.stderr)
        for rule in MATRIX:
            self.assertIn('#"%s": ' % rule, out.stdout)
        self.assertIn(
            '#"project_member_api": "role:member and '
            'project_id:%(project_id)s"', out.stdout)
