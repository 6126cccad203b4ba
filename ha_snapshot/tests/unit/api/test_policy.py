"""The policy defaults: every rule, every persona; the sample generator."""

import subprocess

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
