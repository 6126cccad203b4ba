"""Rules of /v1/servers/{server_id}/restore-points."""

from oslo_policy import policy

from ha_snapshot.policies import base

LIST = 'ha_snapshot:restore_points:list'

rules = [
    policy.DocumentedRuleDefault(
        name=LIST,
        check_str=base.ADMIN_OR_PROJECT_READER,
        description='List the restore points of a protected server.',
        operations=[{'method': 'GET',
                     'path': '/v1/servers/{server_id}/restore-points'}],
        scope_types=['project']),
]


def list_rules():
    return rules
