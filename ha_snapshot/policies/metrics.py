"""Rules of /metrics (Prometheus)."""

from oslo_policy import policy

from ha_snapshot.policies import base

SHOW = 'ha_snapshot:metrics:show'

rules = [
    policy.DocumentedRuleDefault(
        name=SHOW,
        check_str=base.ADMIN,
        description='Read the Prometheus metrics of every protected server '
                    '(RPO age, bytes shipped and stored, merges, '
                    'recoveries) and of every manager replica (alive, '
                    'heartbeat age, servers owned, leases, work done).',
        operations=[{'method': 'GET', 'path': '/metrics'}],
        scope_types=['project']),
]


def list_rules():
    return rules
