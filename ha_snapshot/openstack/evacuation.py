"""Nova calls of a host evacuation: evacuate one server, wait for it.

``evacuate`` sends ``POST /servers/{id}/action {"evacuate": {}}`` (no
host: Nova's scheduler picks one). At compute API microversion 2.95 or
later Nova lands the server on its new host SHUTOFF, so nothing boots
the server's stale disk: the recovery rebuilds it from a restore point
and then starts it. Where 2.95 is not offered the evacuation is sent at
2.14 (no ``onSharedStorage``; Nova finds out) and, once the server runs
on its new host, it is stopped before the rebuild (``servers.stop`` and
``servers.wait_stopped`` with :data:`ERRORS`).

``wait_evacuated`` polls ``GET /servers/{id}`` until Nova names another
host than the failed one, with no task left; ERROR fails with Nova's
fault message. A poll that Nova does not answer (its API is often busy
while a host has failed) is logged and tried again until the wait's own
deadline; a server Nova no longer has fails the wait at once.

May import ha_snapshot.exception and ha_snapshot.openstack (clients,
servers); takes openstacksdk compute proxies.
"""

import time

from openstack import exceptions as sdk_exc
from openstack import utils as sdk_utils
from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.openstack import clients
from ha_snapshot.openstack import servers

LOG = logging.getLogger(__name__)

STOPPED_MICROVERSION = '2.95'
"""From this microversion an evacuated server lands SHUTOFF."""
OLDEST_MICROVERSION = '2.14'
"""The fallback: no ``onSharedStorage`` in the request."""
ERRORS = servers.Errors(exception.EvacuationFailed,
                        exception.EvacuationTimeout)
"""What the evacuation's steps raise, also through ``servers.stop`` and
``servers.wait_stopped`` (the stop of a server evacuated running)."""


def _failed(server_id: str, reason: str) -> exception.EvacuationFailed:
    return exception.EvacuationFailed(server=server_id, reason=reason)


def evacuate(nova, server_id: str) -> bool:
    """Ask Nova to evacuate the server; True when it will land stopped
    (2.95+), False when it will run its stale disk until stopped."""
    try:
        stopped = sdk_utils.supports_microversion(nova, STOPPED_MICROVERSION)
    except clients.API_ERRORS as e:
        raise _failed(server_id, 'Nova\'s API versions could not be read: '
                      '%s' % clients.error_reason(e))
    version = STOPPED_MICROVERSION if stopped else OLDEST_MICROVERSION
    try:
        response = nova.post('/servers/%s/action' % server_id,
                             json={'evacuate': {}}, microversion=version)
        sdk_exc.raise_from_response(response)
    except clients.API_ERRORS as e:
        raise _failed(server_id, 'Nova refused the evacuation (microversion '
                      '%s): %s' % (version, clients.error_reason(e)))
    LOG.info('Server %s: evacuation accepted (microversion %s: lands %s)',
             server_id, version, 'stopped' if stopped else 'running')
    return stopped


def wait_evacuated(nova, server_id: str, failed_host: str, *,
                   timeout: float, interval: float, clock=time.monotonic,
                   sleep=time.sleep):
    """Poll until Nova runs the server on another host than
    ``failed_host`` with no task left (SHUTOFF or ACTIVE); the server."""
    deadline, last_error = clock() + timeout, []
    while True:
        server = servers.poll(nova, server_id, last_error, ERRORS)
        if server is None:
            if clock() >= deadline:
                raise _failed(server_id, 'not evacuated from %s within '
                              '%.0f s; Nova did not answer: %s'
                              % (failed_host, timeout, last_error[0]))
            sleep(interval)
            continue
        task = server.task_state
        if task is None and server.status == 'ERROR':
            fault = (server.fault or {}).get('message') or 'no fault recorded'
            raise _failed(server_id, 'Nova put it in ERROR: %s' % fault)
        if (task is None and server.compute_host
                and server.compute_host != failed_host
                and server.status in ('SHUTOFF', 'ACTIVE')):
            return server
        if clock() >= deadline:
            raise _failed(server_id, 'not evacuated from %s within %.0f s '
                          '(host %s, status %s, task %s)'
                          % (failed_host, timeout, server.compute_host,
                             server.status, task))
        sleep(interval)
