"""Rules of /v1/host-failures (compute hosts found failed)."""

from oslo_policy import policy

from ha_snapshot.policies import base

LIST = 'ha_snapshot:host_failure:list'

rules = [
    policy.DocumentedRuleDefault(
        name=LIST,
        check_str=base.ADMIN,
        description='List the compute hosts the host monitor found failed '
                    '(and partitions of the mirror network): when each was '
                    'detected, confirmed, fenced and closed, by which '
                    'fencing driver, with what result or error, and the '
                    'evacuation of their servers.',
        operations=[{'method': 'GET', 'path': '/v1/host-failures'},
                    {'method': 'GET',
                     'path': '/v1/host-failures/{failure_id}'}],
        scope_types=['project']),
]


def list_rules():
    return rules
