"""``nova-force-down``: mark the host's compute service forced down.

``PUT /os-services/{service_id}`` ``{"forced_down": true}`` through
Nova's API at microversion 2.53 or later (service ids are UUIDs from
2.53; the older force-down action is not used), the same step Masakari
and operators take after they made sure a host is dead. Nova then
reports the service down at once (no wait for ``service_down_time``) and
accepts evacuations from it; its scheduler sends it nothing new.

It does not stop a host that still runs: pair it with power fencing
(the ``ipmi`` driver does both) where a host may be cut off but alive.
Nova refuses to unset ``forced_down`` while evacuation records of the
host remain: an operator unsets it once the host was restarted and
cleaned up (doc/source/admin/host-failure.rst).
"""

from openstack import utils as sdk_utils

from ha_snapshot import exception
from ha_snapshot.fencing import base
from ha_snapshot.openstack import clients

MICROVERSION = '2.53'


def compute(conf, connect, host: str, driver: str):
    """The compute proxy of [nova]; FencingError when it cannot be had."""
    try:
        return connect(conf, 'nova').compute
    except exception.ConfigurationError as e:
        raise exception.FencingError(host=host, driver=driver,
                                     reason=str(e))
    except clients.API_ERRORS as e:
        raise exception.FencingError(
            host=host, driver=driver,
            reason='Nova cannot be reached: %s' % clients.error_reason(e))


def force_down(nova, host: str, service, driver: str) -> str:
    """Force ``service`` down through the ``nova`` compute proxy."""
    try:
        offered = sdk_utils.supports_microversion(nova, MICROVERSION)
    except clients.API_ERRORS as e:
        raise exception.FencingError(
            host=host, driver=driver, reason='Nova\'s API versions could '
            'not be read: %s' % clients.error_reason(e))
    if not offered:
        raise exception.FencingError(
            host=host, driver=driver,
            reason='Nova does not offer compute API microversion %s '
            '(needed to force a service down by its id)' % MICROVERSION)
    try:
        updated = nova.update_service(service.id, forced_down=True)
    except clients.API_ERRORS as e:
        raise exception.FencingError(
            host=host, driver=driver,
            reason='Nova refused to force compute service %s down: %s'
            % (service.id, clients.error_reason(e)))
    if not updated.is_forced_down:
        raise exception.FencingError(
            host=host, driver=driver,
            reason='Nova accepted forced_down for compute service %s but '
            'does not report it forced down' % service.id)
    return ('compute service %s forced down in Nova (state %s)'
            % (service.id, updated.state or 'down'))


class NovaForceDown(base.FencingDriver):

    name = 'nova-force-down'

    def fence(self, host: str, service) -> str:
        if getattr(service, 'is_forced_down', False):
            return ('compute service %s was already forced down in Nova'
                    % service.id)
        nova = compute(self.conf, self._connect, host, self.name)
        return force_down(nova, host, service, self.name)
