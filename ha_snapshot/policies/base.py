"""Check strings shared by every rule, and the generic rules themselves.

The personas are oslo.policy's role-based defaults, scoped to projects:

* project reader: ``role:reader`` in the server's project: reads;
* project member: ``role:member`` in the server's project: reads and acts
  (protect, unprotect, recover);
* admin: ``role:admin``: everything, in every project.

Keystone's default roles imply each other (admin implies member implies
reader), so a member's token carries the reader role too.
"""

from oslo_policy import policy

ADMIN = 'rule:admin_api'
PROJECT_READER = 'rule:project_reader_api'
PROJECT_MEMBER = 'rule:project_member_api'
ADMIN_OR_PROJECT_READER = 'rule:admin_or_project_reader_api'
ADMIN_OR_PROJECT_MEMBER = 'rule:admin_or_project_member_api'

rules = [
    policy.RuleDefault(
        name='admin_api',
        check_str='role:admin',
        description='Default rule for administrative APIs.',
        scope_types=['project']),
    policy.RuleDefault(
        name='project_reader_api',
        check_str='role:reader and project_id:%(project_id)s',
        description='Default rule for reading a project\'s resources.',
        scope_types=['project']),
    policy.RuleDefault(
        name='project_member_api',
        check_str='role:member and project_id:%(project_id)s',
        description='Default rule for acting on a project\'s resources.',
        scope_types=['project']),
    policy.RuleDefault(
        name='admin_or_project_reader_api',
        check_str='rule:admin_api or rule:project_reader_api',
        description='Default rule for project level reader APIs.',
        scope_types=['project']),
    policy.RuleDefault(
        name='admin_or_project_member_api',
        check_str='rule:admin_api or rule:project_member_api',
        description='Default rule for project level APIs that change '
                    'something.',
        scope_types=['project']),
]


def list_rules():
    return rules
