"""Snapshot policies: when to take the next snapshot of an instance.

A policy is a stevedore plugin in the ``ha_snapshot.policy`` namespace,
chosen by ``[policy] name`` the way oslo.messaging picks a driver, and built
per instance with ``(conf, instance_uuid)``. Its one method,
``next_interval(figures)``, returns a ``Decision``; see
:mod:`ha_snapshot.policy.base` for the contract and
:mod:`ha_snapshot.policy.metrics` for the figures it is given.

This package may import oslo.config, oslo.log, stevedore, psutil and
:mod:`ha_snapshot.exception`; it must not import the hypervisor, storage or
messaging layers: the agent gathers the figures and passes them in.
"""

import importlib.metadata

from oslo_config import cfg
from stevedore import driver
from stevedore import exception as stevedore_exc

from ha_snapshot import exception
from ha_snapshot.policy import base

NAMESPACE = 'ha_snapshot.policy'


PolicyNotFound = exception.PolicyNotFound



def available_policies() -> list[str]:
    """Names of the installed policies (entry points; none is imported)."""
    return sorted({ep.name for ep in
                   importlib.metadata.entry_points(group=NAMESPACE)})


def load_policy(conf: cfg.ConfigOpts, instance_uuid: str,
                name: str | None = None) -> base.Policy:
    """The policy ``name`` (default ``[policy] name``) for one instance.

    :raises PolicyNotFound: no such policy, it failed to import, or it is
        not a :class:`~ha_snapshot.policy.base.Policy`.
    :raises ConfigurationError: the policy refused its options.
    """
    name = name or conf.policy.name
    failures = []

    def on_load_failure(_manager, entrypoint, exc):
        failures.append('%s failed to import: %s' % (entrypoint.value, exc))

    def not_found(reason):
        return PolicyNotFound(name=name, reason=reason,
                              available=', '.join(available_policies())
                              or '(none installed)')

    try:
        manager = driver.DriverManager(
            NAMESPACE, name, invoke_on_load=False,
            on_load_failure_callback=on_load_failure,
            warn_on_missing_entrypoint=False)
    except stevedore_exc.MultipleMatches:
        raise not_found('more than one installed plugin has that name')
    except stevedore_exc.NoMatches:
        raise not_found(failures[0] if failures else
                        'no such plugin in the %s namespace' % NAMESPACE)
    cls = manager.driver
    if not (isinstance(cls, type) and issubclass(cls, base.Policy)):
        raise not_found('%r is not a subclass of %s.Policy'
                        % (cls, base.__name__))
    # NOTE: built here rather than by stevedore (invoke_on_load) so that a
    # ConfigurationError from the constructor reaches the caller as is.
    return cls(conf, instance_uuid)
