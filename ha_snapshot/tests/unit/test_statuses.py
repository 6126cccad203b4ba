"""The lifecycle statuses as enums: the same strings as before, everywhere
they are stored, checked and shown."""

import json

import webob
import webob.exc

from ha_snapshot.api.handlers import server as server_handlers
from ha_snapshot.db import models
from ha_snapshot import statuses
from ha_snapshot.tests import base

# NOTE: written out on purpose: these strings are in databases, agents'
# state files and API clients; an enum change must not move them.
INSTANCE = ('protecting', 'protected', 'paused', 'recovering', 'failed',
            'deleted')
RECOVERY = ('requested', 'running', 'succeeded', 'failed')


class StatusesTest(base.TestCase):

    def test_values_unchanged(self):
        self.assertEqual(INSTANCE,
                         tuple(s.value for s in statuses.InstanceStatus))
        self.assertEqual(RECOVERY,
                         tuple(s.value for s in statuses.RecoveryState))
        self.assertEqual(INSTANCE, statuses.INSTANCE_STATUSES)
        self.assertEqual(RECOVERY, statuses.RECOVERY_STATES)
        self.assertEqual(INSTANCE[:-1], statuses.LIVE_INSTANCE_STATUSES)

    def test_members_are_their_strings(self):
        s = statuses.InstanceStatus.PROTECTED
        self.assertEqual('protected', s)
        self.assertEqual('protected', str(s))
        self.assertEqual('protected', '%s' % s)
        self.assertEqual('"protected"', json.dumps(s))
        self.assertIs(s, statuses.InstanceStatus('protected'))
        self.assertRaises(ValueError, statuses.RecoveryState, 'paused')

    def test_database_constraints_unchanged(self):
        # NOTE: the CHECK constraints the migrations wrote name exactly
        # these strings: a schema change would need a migration.
        self.assertEqual(INSTANCE, models.INSTANCE_STATUSES)
        self.assertEqual(RECOVERY, models.RECOVERY_STATES)
        for type_ in (type(v) for v in models.INSTANCE_STATUSES
                      + models.RECOVERY_STATES):
            self.assertIs(str, type_)
        checks = {table.name: str(c.sqltext)
                  for table in models.Base.metadata.tables.values()
                  for c in table.constraints
                  if c.__class__.__name__ == 'CheckConstraint'}
        self.assertEqual(
            "status IN ('protecting', 'protected', 'paused', 'recovering', "
            "'failed', 'deleted')", checks['instances'])
        self.assertEqual(
            "state IN ('requested', 'running', 'succeeded', 'failed')",
            checks['recoveries'])

    def test_api_filter_error_lists_every_status(self):
        req = webob.Request.blank('/v1/servers?status=protected,sleepy')
        e = self.assertRaises(webob.exc.HTTPBadRequest,
                              server_handlers._statuses, req)
        self.assertEqual(
            "Unknown status 'sleepy': expected one or more (comma "
            "separated) of protecting, protected, paused, recovering, "
            "failed, deleted.", e.detail)
        req = webob.Request.blank('/v1/servers?status=paused,deleted')
        self.assertEqual(['paused', 'deleted'],
                         server_handlers._statuses(req))
