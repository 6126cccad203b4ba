"""Rules of /v1/servers/{server_id}/recoveries."""

from oslo_policy import policy

from ha_snapshot.policies import base

PREFIX = 'ha_snapshot:recoveries:%s'
CREATE = PREFIX % 'create'
LIST = PREFIX % 'list'
SHOW = PREFIX % 'show'

rules = [
    policy.DocumentedRuleDefault(
        name=CREATE,
        check_str=base.ADMIN_OR_PROJECT_MEMBER,
        description='Recover a server to its newest or a chosen restore '
                    'point.',
        operations=[{'method': 'POST',
                     'path': '/v1/servers/{server_id}/recoveries'}],
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=LIST,
        check_str=base.ADMIN_OR_PROJECT_READER,
        description='List the recoveries of a server.',
        operations=[{'method': 'GET',
                     'path': '/v1/servers/{server_id}/recoveries'}],
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=SHOW,
        check_str=base.ADMIN_OR_PROJECT_READER,
        description='Show one recovery of a server.',
        operations=[{'method': 'GET',
                     'path': '/v1/servers/{server_id}/recoveries/'
                             '{recovery_id}'}],
        scope_types=['project']),
]


def list_rules():
    return rules
