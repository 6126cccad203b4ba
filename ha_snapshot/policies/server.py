"""Rules of /v1/servers: protected servers."""

from oslo_policy import policy

from ha_snapshot.policies import base

PREFIX = 'ha_snapshot:servers:%s'
LIST = PREFIX % 'list'
LIST_ALL_PROJECTS = PREFIX % 'list:all_projects'
SHOW = PREFIX % 'show'
PROTECT = PREFIX % 'protect'
PROTECT_HOST = PREFIX % 'protect:host'
UNPROTECT = PREFIX % 'unprotect'

rules = [
    policy.DocumentedRuleDefault(
        name=LIST,
        check_str=base.ADMIN_OR_PROJECT_READER,
        description='List the protected servers of the project.',
        operations=[{'method': 'GET', 'path': '/v1/servers'}],
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=LIST_ALL_PROJECTS,
        check_str=base.ADMIN,
        description='List the protected servers of every project '
                    '(all_projects=1) or of another project (project_id).',
        operations=[{'method': 'GET',
                     'path': '/v1/servers?all_projects=1'}],
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=SHOW,
        check_str=base.ADMIN_OR_PROJECT_READER,
        description='Show a protected server: status, host, newest restore '
                    'point and its age. A server the caller may not show '
                    'is reported as not found.',
        operations=[{'method': 'GET', 'path': '/v1/servers/{server_id}'}],
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=PROTECT,
        check_str=base.ADMIN_OR_PROJECT_MEMBER,
        description='Protect a server (idempotent) or change its snapshot '
                    'policy.',
        operations=[{'method': 'PUT', 'path': '/v1/servers/{server_id}'}],
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=PROTECT_HOST,
        check_str=base.ADMIN,
        description='Name the compute host of a server being protected '
                    '(or its project) instead of asking Nova.',
        operations=[{'method': 'PUT', 'path': '/v1/servers/{server_id}'}],
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=UNPROTECT,
        check_str=base.ADMIN_OR_PROJECT_MEMBER,
        description='Stop protecting a server; its restore points stay '
                    'until retention removes them.',
        operations=[{'method': 'DELETE', 'path': '/v1/servers/{server_id}'}],
        scope_types=['project']),
]


def list_rules():
    return rules
