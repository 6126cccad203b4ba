"""The ``fixed`` policy: a snapshot every ``[policy] interval`` seconds."""

from ha_snapshot.policy import base
from ha_snapshot.policy import metrics


class FixedPolicy(base.Policy):
    """Ignores the figures (they are still logged with each decision)."""

    name = 'fixed'

    def decide(self, figures: metrics.Figures) -> base.Decision:
        interval = self.conf.policy.interval
        inputs = figures.as_inputs()
        inputs['interval'] = interval
        return base.Decision(interval, 'fixed interval', inputs)
