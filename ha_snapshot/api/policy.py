"""The policy enforcer of ha-snapshot-api.

One :class:`oslo_policy.policy.Enforcer` per application, built from the
ConfigOpts the application was deployed with (no module-level enforcer
that tests would have to reset); the request context carries it to the
handlers. :func:`get_enforcer` is the ``oslo.policy.enforcer`` entry point
of the oslopolicy command line tools, which bring no configuration of
their own.
"""

import time

from oslo_config import cfg
from oslo_log import log as logging
from oslo_policy import opts as policy_opts
from oslo_policy import policy
import webob.exc

from ha_snapshot.api import errors
from ha_snapshot import policies

LOG = logging.getLogger(__name__)

POLICY_FILE = 'policy.yaml'


def set_defaults(conf: cfg.ConfigOpts) -> None:
    # NOTE: oslo.policy still defaults to policy.json.
    policy_opts.set_defaults(conf, POLICY_FILE)


# NOTE: how often a request may look for a changed policy file.
RELOAD_CHECK_SECONDS = 1.0


class Enforcer(policy.Enforcer):
    """oslo.policy's Enforcer, looking for a new or changed policy file
    at most once every :data:`RELOAD_CHECK_SECONDS`.

    oslo.policy looks at every check: without a policy file (the policy
    in code, the default) it searches every configuration directory for
    one each time, two thirds of the policy's cost per request under
    load. A changed file still applies within a second.
    """

    def __init__(self, conf, *args, clock=time.monotonic, **kwargs):
        self._clock = clock
        self._checked_at = None
        super().__init__(conf, *args, **kwargs)

    def load_rules(self, force_reload: bool = False) -> None:
        now = self._clock()
        if (not force_reload and self._checked_at is not None
                and 0 <= now - self._checked_at < RELOAD_CHECK_SECONDS):
            return
        super().load_rules(force_reload)
        self._checked_at = now

    def clear(self) -> None:
        super().clear()
        self._checked_at = None


def make_enforcer(conf: cfg.ConfigOpts, clock=time.monotonic) -> Enforcer:
    set_defaults(conf)
    enforcer = Enforcer(conf, clock=clock)
    enforcer.register_defaults(policies.list_rules())
    enforcer.load_rules()
    return enforcer


def get_enforcer() -> policy.Enforcer:
    """For oslopolicy-policy-generator and friends (global CONF)."""
    cfg.CONF([], project='ha-snapshot')
    return make_enforcer(cfg.CONF)


def authorize(enforcer: policy.Enforcer, context, action: str,
              target: dict, fatal: bool = True) -> bool:
    """May ``context`` do ``action`` on ``target``? 403 if not and fatal."""
    try:
        allowed = enforcer.authorize(action, target, context, do_raise=False)
    except policy.InvalidScope:
        allowed = False
    if not allowed:
        LOG.debug('Policy %s refused for %s on %s', action,
                  context.to_policy_values(), target)
        if fatal:
            raise errors.http_error(
                webob.exc.HTTPForbidden,
                'Policy does not allow %s to be performed.' % action,
                'ha_snapshot.policy.forbidden')
    return bool(allowed)
