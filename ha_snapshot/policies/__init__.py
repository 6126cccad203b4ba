"""oslo.policy defaults of ha-snapshot-api, one module per noun.

:func:`list_rules` is the ``oslo.policy.policies`` entry point (namespace
``ha_snapshot``) read by ``oslopolicy-sample-generator`` and by the
enforcer built in :mod:`ha_snapshot.api.policy`.

May import oslo.policy only.
"""

import itertools

from ha_snapshot.policies import alarm
from ha_snapshot.policies import base
from ha_snapshot.policies import host_failure
from ha_snapshot.policies import manager
from ha_snapshot.policies import metrics
from ha_snapshot.policies import recovery
from ha_snapshot.policies import restore_point
from ha_snapshot.policies import server


def list_rules():
    return list(itertools.chain(
        base.list_rules(),
        server.list_rules(),
        restore_point.list_rules(),
        recovery.list_rules(),
        alarm.list_rules(),
        metrics.list_rules(),
        manager.list_rules(),
        host_failure.list_rules(),
    ))
