"""Rules of /v1/managers (the manager replicas)."""

from oslo_policy import policy

from ha_snapshot.policies import base

LIST = 'ha_snapshot:manager:list'

rules = [
    policy.DocumentedRuleDefault(
        name=LIST,
        check_str=base.ADMIN,
        description='List the manager replicas: host, heartbeat age, alive '
                    'or dead, how many protected servers each owns, its '
                    'leases and its work counters.',
        operations=[{'method': 'GET', 'path': '/v1/managers'}],
        scope_types=['project']),
]


def list_rules():
    return rules
