"""The contract of a snapshot policy, and the logging of its decisions.

The agent's loop for one instance, which the contract assumes::

    t = take_snapshot(); ship the delta; wait for the durable ack
    decision = policy.next_interval(figures)   # figures of that delta
    take the next snapshot at t + decision.interval_seconds
                           (at once if that time has passed)

so ``interval_seconds`` is the time from the start of the latest snapshot
to the start of the next one. May import oslo.log and
:mod:`ha_snapshot.policy.metrics`; nothing else of ha_snapshot.
"""

import abc
import dataclasses

from oslo_config import cfg
from oslo_log import log as logging

from ha_snapshot.policy import metrics

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Decision:
    """When to take the next snapshot, why, and from what.

    ``inputs`` holds every figure the decision was made from (the
    :class:`~ha_snapshot.policy.metrics.Figures` and the policy's own
    estimates), flat and JSON-friendly, for the log and for tests.
    """

    interval_seconds: float
    reason: str
    inputs: dict


class Policy(abc.ABC):
    """One instance's snapshot policy; subclasses implement :meth:`decide`.

    Built once per protected instance and kept for its lifetime, so a
    policy may learn from the figures of earlier cycles.
    """

    #: The entry point name, for the log.
    name = None

    def __init__(self, conf: cfg.ConfigOpts, instance_uuid: str):
        self.conf = conf
        self.instance_uuid = instance_uuid

    def next_interval(self, figures: metrics.Figures) -> Decision:
        """Decide, and log the decision with its inputs (INFO)."""
        decision = self.decide(figures)
        LOG.info('Snapshot policy %(policy)s, instance %(instance)s: next '
                 'snapshot %(interval).1f s after the latest (%(reason)s); '
                 'inputs: %(inputs)s',
                 {'policy': self.name or type(self).__name__,
                  'instance': self.instance_uuid,
                  'interval': decision.interval_seconds,
                  'reason': decision.reason,
                  'inputs': format_inputs(decision.inputs)})
        return decision

    @abc.abstractmethod
    def decide(self, figures: metrics.Figures) -> Decision:
        """The decision for these figures; must not block."""


def format_inputs(inputs: dict) -> str:
    parts = []
    for key in sorted(inputs):
        value = inputs[key]
        if isinstance(value, float):
            value = '%.4g' % value
        parts.append('%s=%s' % (key, value))
    return ' '.join(parts)
