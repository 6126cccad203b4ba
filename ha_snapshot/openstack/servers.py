"""Nova calls: where a server runs; the rebuild recovery's look, stop,
rebuild, start, waits.

The recoveries rebuild a stopped server (``stop``, ``wait_stopped``), so
that it is re-baselined before its guest runs, then start it
(``start``, ``wait_active``). ``rebuild`` sends ``POST
/servers/{id}/action {"rebuild": {"imageRef": ...}}`` and nothing else,
so Nova keeps the server's name, metadata, key, user data, networks and
volumes (ephemeral and swap disks come back empty: Nova's libvirt driver
cannot preserve them), and keeps a stopped server stopped. Waits poll
``GET /servers/{id}``; ERROR fails with Nova's fault message, another
image than the recovery's with the one Nova shows. ``stop`` and
``wait_stopped`` serve the host evacuation too: ``errors`` says which
exceptions a failure raises (:data:`REBUILD` or the evacuation's).
A poll Nova does not answer (its API is often busy while a host has
failed) is logged and tried again until the wait's deadline, in every
wait; a server Nova no longer has fails the wait at once.

May import ha_snapshot.exception and ha_snapshot.openstack.clients; takes
openstacksdk compute proxies.
"""

import time
import typing

from openstack import exceptions as sdk_exc
from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.openstack import clients

LOG = logging.getLogger(__name__)

_API_ERRORS = clients.API_ERRORS
_reason = clients.error_reason


class Errors(typing.NamedTuple):
    """What a failed step raises: ``failed(server=, reason=)``, and
    ``timeout(server=, wanted=, timeout=, status=, task_state=)`` for a
    server that did not get there in time."""
    failed: type
    timeout: type


REBUILD = Errors(exception.RebuildFailed, exception.RebuildTimeout)


def locate(conf, instance: str) -> dict:
    """Where Nova runs ``instance`` and whose it is, through [nova]:
    {"uuid", "host", "project", "name"}. InstanceNotFound when Nova has
    no such server; OpenStackError when Nova cannot say."""
    try:
        server = clients.connection(conf, 'nova').compute.get_server(
            instance)
    except sdk_exc.NotFoundException:
        raise exception.InstanceNotFound(
            'Nova has no server %s.' % instance, instance=instance)
    except _API_ERRORS as e:
        # NOTE: keystoneauth's errors too (Nova or Keystone unreachable,
        # credentials refused): they are no SDKException.
        raise exception.OpenStackError(
            service='Nova', reason='looking up server %s: %s'
            % (instance, _reason(e)))
    if not server.compute_host:
        raise exception.OpenStackError(
            service='Nova', reason='server %s has no host (status %s); '
            'protect it once it is ACTIVE, or check that the [nova] '
            'user of the manager has the admin role (hosts are shown '
            'to admins only)' % (instance, server.status))
    return {'uuid': instance, 'host': server.compute_host,
            'project': server.project_id, 'name': server.name}


def image_id(server) -> str | None:
    """The server's image id; None for a volume-backed server."""
    image = server.image
    return getattr(image, 'id', None) or None


def _gone(server_id: str, errors: Errors):
    return errors.failed(server=server_id, reason='Nova has no such server '
                         'any more (deleted?)')


def get(nova, server_id: str, errors: Errors = REBUILD):
    try:
        return nova.get_server(server_id)
    except sdk_exc.NotFoundException:
        raise _gone(server_id, errors)
    except _API_ERRORS as e:
        raise errors.failed(server=server_id,
                            reason='reading the server: %s' % _reason(e))


def poll(nova, server_id: str, last_error: list, errors: Errors = REBUILD):
    """The server, or None when Nova did not answer this time (the
    reason goes into ``last_error``, and the log); a server Nova no
    longer has fails at once."""
    try:
        return nova.get_server(server_id)
    except sdk_exc.NotFoundException:
        raise _gone(server_id, errors)
    except _API_ERRORS as e:
        last_error[:] = [_reason(e)]
        LOG.warning('Server %s: reading it from Nova failed (%s); again',
                    server_id, last_error[0])
        return None


def rebuild(nova, server, image: str) -> None:
    try:
        nova.rebuild_server(server, image)
    except _API_ERRORS as e:
        raise exception.RebuildFailed(
            server=server.id, reason='Nova refused the rebuild with image '
            '%s: %s' % (image, _reason(e)))
    LOG.info('Server %s: rebuild with image %s accepted', server.id, image)


def start(nova, server) -> None:
    try:
        nova.start_server(server)
    except _API_ERRORS as e:
        raise exception.RebuildFailed(
            server=server.id, reason='the rebuilt server is stopped and '
            'Nova refused to start it: %s' % _reason(e))
    LOG.info('Server %s: rebuilt while stopped; started', server.id)


def stop(nova, server, errors: Errors = REBUILD) -> None:
    """``os-stop``; a server Nova is already stopping is left to it."""
    try:
        nova.stop_server(server)
    except sdk_exc.ConflictException as e:
        again = get(nova, server.id, errors)
        if again.status == 'SHUTOFF' or again.task_state == 'powering-off':
            return
        raise errors.failed(
            server=server.id, reason='Nova refused to stop it (status %s, '
            'task %s): %s' % (again.status, again.task_state, _reason(e)))
    except _API_ERRORS as e:
        raise errors.failed(server=server.id, reason='Nova refused to stop '
                            'it: %s' % _reason(e))
    LOG.info('Server %s: stop asked', server.id)


def wait_stopped(nova, server_id: str, image: str | None = None, *,
                 timeout: float, interval: float, active_polls: int = 0,
                 errors: Errors = REBUILD, clock=time.monotonic,
                 sleep=time.sleep):
    """Poll until the server (running ``image``, when given) is SHUTOFF
    with no task; the server.

    ``active_polls`` > 0: a server ACTIVE with no task on that many polls
    in a row is returned too (Nova left it running: a rebuild of a server
    that was in ERROR). Fewer do not count: Nova's rebuild of a stopped
    server saves it ACTIVE with no task for a moment before it powers it
    off again.
    """
    deadline = clock() + timeout
    active, last_error = 0, []
    while True:
        server = poll(nova, server_id, last_error, errors)
        if server is None:
            if clock() >= deadline:
                raise errors.failed(
                    server=server_id, reason='not stopped within %.0f s; '
                    'Nova did not answer: %s' % (timeout, last_error[0]))
            sleep(interval)
            continue
        task = server.task_state
        if task is None and server.status == 'ERROR':
            fault = (server.fault or {}).get('message') or 'no fault recorded'
            raise errors.failed(
                server=server_id, reason='Nova put it in ERROR: %s' % fault)
        if image is not None and image_id(server) != image:
            raise errors.failed(
                server=server_id, reason='it runs image %s, not the recovery '
                'image %s (status %s): Nova rolled the rebuild back or '
                'someone rebuilt it again; see openstack server event list'
                % (image_id(server), image, server.status))
        if task is None and server.status == 'SHUTOFF':
            return server
        active = active + 1 if (task is None
                                and server.status == 'ACTIVE') else 0
        if active_polls and active >= active_polls:
            return server
        if clock() >= deadline:
            raise errors.timeout(
                server=server_id, wanted='SHUTOFF', timeout=timeout,
                status=server.status, task_state=task)
        sleep(interval)


def wait_active(nova, server_id: str, image: str, *, timeout: float,
                interval: float, on_start=None, clock=time.monotonic,
                sleep=time.sleep, was_stopped: bool = False):
    """Poll until the server runs ``image``, ACTIVE, with no task.

    ``on_start()`` is called before the one ``os-start`` a server left
    SHUTOFF gets (a progress step). ``was_stopped``: the server was
    stopped when the rebuild was asked for.
    """
    deadline = clock() + timeout
    started = False
    # NOTE: Nova's rebuild of a stopped server saves it ACTIVE with no task
    # once spawned and only then powers it off again (task powering-off,
    # then SHUTOFF). Taken for the end, that moment sent the agent to a
    # domain Nova was stopping. So a server stopped before the rebuild is
    # ACTIVE only after our os-start, and any ACTIVE must still be ACTIVE
    # at the next poll (the server may have been stopped after we looked).
    seen_active = False
    last_error = []
    while True:
        server = poll(nova, server_id, last_error)
        if server is None:
            seen_active = False
            if clock() >= deadline:
                raise exception.RebuildFailed(
                    server=server_id, reason='not running within %.0f s; '
                    'Nova did not answer: %s' % (timeout, last_error[0]))
            sleep(interval)
            continue
        task = server.task_state
        fault = (server.fault or {}).get('message') or 'no fault recorded'
        if task is None and server.status == 'ERROR':
            # NOTE: Nova rolls the image back when the scheduler refuses
            # the rebuild (NoValidHost), so this comes before the image.
            raise exception.RebuildFailed(
                server=server_id, reason='Nova put it in ERROR: %s' % fault)
        if image_id(server) != image:
            raise exception.RebuildFailed(
                server=server_id, reason='it runs image %s, not the recovery '
                'image %s (status %s): Nova rolled the rebuild back or '
                'someone rebuilt it again; see openstack server event list'
                % (image_id(server), image, server.status))
        if task is None and server.status == 'ACTIVE' and (
                started or not was_stopped):
            if seen_active:
                return server
            seen_active = True
        else:
            seen_active = False
        if task is None and server.status == 'SHUTOFF' and not started:
            if on_start is not None:
                on_start()
            start(nova, server)
            started = True
        if clock() >= deadline and not seen_active:
            raise exception.RebuildTimeout(
                server=server_id, wanted='ACTIVE', timeout=timeout,
                status=server.status, task_state=task)
        sleep(interval)
