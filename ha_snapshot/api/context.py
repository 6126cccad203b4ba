"""The request context of ha-snapshot-api: who calls, and what they may do.

May import oslo.context and ha_snapshot.api.policy.
"""

from oslo_context import context

from ha_snapshot.api import policy

class RequestContext(context.RequestContext):

    def __init__(self, *args, enforcer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.enforcer = enforcer

    def can(self, action: str, target: dict | None = None,
            fatal: bool = True) -> bool:
        """Check policy ``action``; ``target`` defaults to our project."""
        if target is None:
            target = {'project_id': self.project_id}
        return policy.authorize(self.enforcer, self, action, target,
                                fatal=fatal)
