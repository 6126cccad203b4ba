"""Rules of /v1/alarms/{server_id} when Aodh calls with a Keystone token.

Aodh's ``trust+http`` notifier calls with a token for a trust its user
delegated: the user's roles in the alarm's project. A call with a valid
per-server secret (``?secret=``) is authorised by the secret alone and
does not reach this rule.
"""

from oslo_policy import policy

from ha_snapshot.policies import base

CREATE = 'ha_snapshot:alarms:create'

rules = [
    policy.DocumentedRuleDefault(
        name=CREATE,
        check_str=base.ADMIN_OR_PROJECT_MEMBER,
        description='Report an Aodh alarm about a server (Aodh trust+http '
                    'notifier); a transition to "alarm" may start a '
                    'recovery.',
        operations=[{'method': 'POST', 'path': '/v1/alarms/{server_id}'}],
        scope_types=['project']),
]


def list_rules():
    return rules
