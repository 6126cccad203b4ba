"""``rebuild``: bring a failed Nova server back on its restore point.

The manager does the work, step by step (each step's name is recorded on
the recovery before it starts, so a failure says where it stopped):

``inspect-server``
    ``GET /servers/{id}`` from Nova (it must exist and boot from an image:
    volume-backed servers are refused, Nova cannot rebuild them with
    another image before microversion 2.93).
``find-image``
    A complete recovery image of this restore point already in Glance is
    used again: this recovery's own (uploaded before its runner stopped:
    a manager restarted, or another replica took the recovery over), else
    an earlier recovery's. This recovery's unfinished uploads (queued,
    saving...) are deleted, only while its lease is still held; other
    recoveries' images are never deleted here.
``export``
    The restore point is exported from the store into ``[recovery]
    work_dir`` (raw or qcow2, ``[recovery] image_disk_format``).
``upload-image``
    A private image is created (owned by the server's project if the
    service user may, tagged ``ha_snapshot`` and ``ha_snapshot:<server>``,
    properties naming server, restore point, recovery, lease generation,
    size and source image, plus the source image's hw_*/os_* properties
    so the server boots the same way) and the export streamed into it;
    the export is removed.
``stop-server``
    A server Nova has ACTIVE is stopped (``os-stop``) and waited for,
    SHUTOFF: Nova keeps a stopped server stopped across its rebuild, so
    the rebuilt disk is re-baselined before its guest runs.
``rebuild-server``
    ``POST /servers/{id}/action {"rebuild": {"imageRef": ...}}``.
``wait-rebuilt``
    Until the server runs the image, SHUTOFF, with no task left, for at
    most ``[recovery] rebuild_timeout``; ERROR fails with Nova's fault.
``stop-rebuilt``
    Only for a server Nova leaves ACTIVE (one rebuilt from ERROR, or
    started by someone since): it is stopped; its guest ran before the
    re-baseline, which is logged.
``rebaseline``
    The agent on the server's host starts change tracking afresh on the
    rebuilt disk of the stopped server, its next delta based on this
    restore point: what the store holds is not sent again, and what the
    guest writes from its first instruction on is in the next delta.
``start-rebuilt``
    ``os-start``.
``wait-running``
    Until the server is ACTIVE with no task left, for at most
    ``[recovery] rebuild_timeout``.
``cleanup-images``
    Recovery images of finished recoveries beyond ``[recovery]
    keep_images`` are deleted, and duplicates of this recovery's (a
    failure here is logged, not fatal); images of recoveries in progress
    are left alone.

Run again after a manager restart (the recovery was resumed), it uses the
image uploaded before; when the recorded step shows the rebuild was
already sent, it does not send it again if the server runs the image; when
the step shows the rebuild had ended (``rebaseline``), it re-baselines the
stopped server again (the same result) and starts it; after
``start-rebuilt`` or ``wait-running`` it only waits for the server to run
(starting it if it is still stopped); at ``cleanup-images`` it only
cleans up, even if the image is pruned already.

What the action knows of its recovery comes from ``progress`` (the
engine's :class:`~ha_snapshot.manager.recovery.Progress`): its id, its
lease generation, a lease check and the instance's recoveries. A plain
callable works too: images then name no recovery and every image counts
as of a finished one (the behaviour before several replicas).

May import ha_snapshot.openstack, the store (given to the constructor),
ha_snapshot.statuses and ha_snapshot.exception.
"""

import os

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc
from oslo_log import log as logging

from ha_snapshot import disk_layout
from ha_snapshot import exception
from ha_snapshot.openstack import clients
from ha_snapshot.openstack import images
from ha_snapshot.openstack import servers
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

# NOTE: steps after which Nova may already have the rebuild request;
# wait-active and start-server are those of a manager of the previous
# release,
# which waited for (and started) the rebuilt server before its
# re-baseline: resumed there, the server is stopped and re-baselined.
_REBUILD_SENT = ('rebuild-server', 'wait-rebuilt', 'wait-active',
                 'start-server')
# NOTE: steps reached only once the server ran the recovery image, stopped.
_REBUILT = ('stop-rebuilt', 'rebaseline', 'start-rebuilt', 'wait-running',
            'cleanup-images')
# NOTE: steps reached once the rebuilt server was re-baselined.
_REBASELINED = ('start-rebuilt', 'wait-running', 'cleanup-images')


class RebuildAction:

    name = 'rebuild'

    def __init__(self, conf, agent_api=None, store=None,
                 connect=clients.connection):
        self.conf = conf
        self.agent_api = agent_api
        self.store = store
        self.connect = connect

    def recover(self, instance, restore_point: str, progress) -> dict:
        if self.store is None or self.agent_api is None:
            raise exception.ConfigurationError(
                reason='the rebuild recovery action needs the store and the '
                'agent API: load it through the manager service')
        conf = self.conf.recovery
        uuid = instance.uuid
        # NOTE: set by the engine when it resumes a recovery that a
        # stopped manager left running; plain callables have none.
        resumed_at = getattr(progress, 'previous_step', None)

        progress('inspect-server')
        nova = self._proxy('nova', 'compute', 'Nova')
        server = servers.get(nova, uuid)
        current = servers.image_id(server)
        if current is None:
            raise exception.RebuildFailed(
                server=uuid, reason='it boots from a volume; the rebuild '
                'action only handles servers booted from an image')

        if resumed_at in _REBUILT:
            # NOTE: the rebuild ended before the manager stopped; its image
            # may be pruned already (keep_images = 0): do not rebuild again.
            LOG.info('Instance %s: rebuilt before the manager stopped (at '
                     '%s); image %s', uuid, resumed_at, current)
            image_id = current
            glance = self._proxy('glance', 'image', 'Glance')
        else:
            glance, image_id, server = self._rebuild(
                nova, server, instance, restore_point, resumed_at,
                progress)

        host = server.compute_host or instance.host
        result = None
        if resumed_at not in _REBASELINED:
            server = self._stopped(nova, server, image_id, progress)
            progress('rebaseline')
            result = self._rebaseline(instance, host, restore_point)
        if resumed_at != 'cleanup-images':
            server = self._start(nova, uuid, image_id, progress)

        progress('cleanup-images')
        pruned = images.prune(glance, uuid, conf.keep_images, image_id,
                              recovery=recovery_id(progress),
                              finished=finished_recoveries(progress))
        LOG.info('Instance %s rebuilt from restore point %s (image %s) on '
                 '%s; %d old recovery images deleted', uuid, restore_point,
                 image_id, host, len(pruned))
        return {'instance': uuid, 'restore_point': restore_point,
                'image': image_id, 'host': host, 'rebaseline': result,
                'images_deleted': pruned}

    def _rebuild(self, nova, server, instance, restore_point, resumed_at,
                 progress):
        """find-image, export, upload-image, stop-server, rebuild-server,
        wait-rebuilt. Returns (glance proxy, image id, the rebuilt server,
        SHUTOFF)."""
        conf = self.conf.recovery
        uuid = instance.uuid
        current = servers.image_id(server)
        progress('find-image')
        glance = self._proxy('glance', 'image', 'Glance')
        image = images.find_reusable(glance, uuid, restore_point,
                                     conf.image_disk_format,
                                     recovery=recovery_id(progress),
                                     may_delete=_lease_held(progress))
        if image is not None:
            LOG.info('Instance %s: reusing recovery image %s of restore '
                     'point %s (made by recovery %s)', uuid, image.id,
                     restore_point, images.recovery_of(image) or 'unknown')
        else:
            image = self._upload(glance, server, instance, restore_point,
                                 current, progress)

        server = servers.get(nova, uuid)
        if resumed_at in _REBUILD_SENT and (
                servers.image_id(server) == image.id):
            LOG.info('Instance %s: Nova already has the rebuild with image '
                     '%s (resumed at %s)', uuid, image.id, resumed_at)
        else:
            server = self._stopped(nova, server, None, progress)
            progress('rebuild-server')
            servers.rebuild(nova, server, image.id)

        progress('wait-rebuilt')
        server = servers.wait_stopped(
            nova, uuid, image.id, timeout=conf.rebuild_timeout,
            interval=conf.rebuild_poll_interval, active_polls=3)
        return glance, image.id, server

    def _stopped(self, nova, server, image, progress):
        """The server, SHUTOFF: stop-server if Nova has it ACTIVE (or is
        stopping or starting it); ``image``: the recovery image it must
        run (None before the rebuild)."""
        conf = self.conf.recovery
        wait = dict(timeout=conf.rebuild_timeout,
                    interval=conf.rebuild_poll_interval)
        task = server.task_state
        if server.status == 'SHUTOFF' and task is None:
            return server
        if image is None and server.status != 'ACTIVE' and (
                task not in ('powering-off', 'powering-on')):
            # NOTE: ERROR (Nova rebuilds it, and starts it) or a task of
            # Nova's own: the rebuild is sent as it stands.
            return server
        # NOTE: two names: a manager resumed at the second must not
        # rebuild again.
        progress('stop-server' if image is None else 'stop-rebuilt')
        if task is not None:
            # NOTE: settles SHUTOFF, or ACTIVE (then stopped below).
            server = servers.wait_stopped(nova, server.id, image,
                                          active_polls=2, **wait)
            if server.status == 'SHUTOFF':
                return server
        if image is not None:
            # NOTE: rebuilt from ERROR (Nova then starts it) or started by
            # someone since: the guest ran on the rebuilt disk before its
            # re-baseline.
            LOG.warning('Server %s: ACTIVE after its rebuild: its guest ran '
                        'before the re-baseline, what it wrote meanwhile is '
                        'in no delta', server.id)
        servers.stop(nova, server)
        return servers.wait_stopped(nova, server.id, image, **wait)

    def _start(self, nova, uuid, image_id, progress):
        """start-rebuilt (unless Nova runs it already), wait-running."""
        conf = self.conf.recovery
        server = servers.get(nova, uuid)
        if server.status == 'SHUTOFF' and server.task_state is None:
            progress('start-rebuilt')
            servers.start(nova, server)
        progress('wait-running')
        return servers.wait_active(
            nova, uuid, image_id, timeout=conf.rebuild_timeout,
            interval=conf.rebuild_poll_interval,
            on_start=lambda: progress('start-rebuilt'))

    def _rebaseline(self, instance, host, restore_point):
        uuid = instance.uuid
        if host != instance.host:
            LOG.warning('Instance %s: Nova has it on %s, the manager knew '
                        '%s; re-baselining on %s', uuid, host, instance.host,
                        host)
        result = self.agent_api.rebaseline(host, uuid, restore_point,
                                           timeout=self.conf.recovery.timeout)
        if (result or {}).get('full'):
            LOG.warning('Instance %s: the agent on %s sends the whole disk '
                        'again (it holds a restore point newer than %s)',
                        uuid, host, restore_point)
        log_disks(uuid, host, restore_point, result)
        return result

    def _proxy(self, group, service, name):
        # NOTE: openstacksdk discovers the API version when a proxy is
        # first used, so an unreachable endpoint fails here.
        try:
            return getattr(self.connect(self.conf, group), service)
        except (ks_exc.ClientException, sdk_exc.SDKException) as e:
            raise exception.OpenStackError(
                service=name, reason='cannot reach the %s API ([%s] '
                'options): %s: %s' % (service, group, type(e).__name__, e))

    def _upload(self, glance, server, instance, restore_point, current,
                progress):
        conf = self.conf.recovery
        uuid = instance.uuid
        # NOTE: after an earlier recovery the server runs one of our
        # images; the original image is the one that one was made from.
        source = current
        for image in images.find(glance, uuid):
            if image.id == current:
                source = (image.properties or {}).get(images.PROP_SOURCE)
        inherited = images.inheritable_properties(glance, source)
        owner = server.project_id if conf.image_owner == 'project' else None

        progress('export')
        fmt = conf.image_disk_format
        os.makedirs(conf.work_dir, mode=0o700, exist_ok=True)
        path = os.path.join(conf.work_dir, '%s-%s.%s'
                            % (uuid, restore_point, fmt))
        try:
            self.store.export(uuid, path, restore_point, fmt=fmt,
                              disk=disk_layout.ROOT)
            progress('upload-image')
            image = images.create(
                glance, name='ha-snapshot-%s-%s' % (uuid, restore_point),
                instance=uuid, restore_point=restore_point, disk_format=fmt,
                source_image=source, owner=owner, properties=inherited,
                recovery=recovery_id(progress),
                generation=getattr(progress, 'generation', None),
                size=os.path.getsize(path))
            images.upload(glance, image, path, uuid,
                          may_delete=_lease_held(progress))
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return image


def log_disks(uuid: str, host: str, restore_point: str, result) -> None:
    """Which disks the agent's re-baseline wrote from the restore point
    (its answer is in the recovery's record too)."""
    result = result or {}
    if 'disks_restored' not in result:
        return  # NOTE: an agent from before disks were restored
    LOG.info('Instance %s: the agent on %s restored %s from restore point '
             '%s (the root from its image)%s', uuid, host,
             'the disks %s' % ', '.join(result['disks_restored'])
             if result['disks_restored'] else 'no disk but the root',
             restore_point,
             '; left as Nova made them: %s' % ', '.join(result['disks_left'])
             if result.get('disks_left') else '')


def recovery_id(progress) -> str | None:
    """The id of the recovery ``progress`` reports for; None if none
    (the other recovery actions that upload images use it too)."""
    return getattr(progress, 'recovery_id', None)


def _lease_held(progress):
    """A ``may_delete()`` for images of this recovery: True while the
    recovery's lease is held (always without one); None for a plain
    callable."""
    check = getattr(progress, 'check_lease', None)
    if check is None:
        return None

    def held() -> bool:
        try:
            check()
        except exception.LeaseLost:
            return False
        return True
    return held


def finished_recoveries(progress) -> set | None:
    """Ids of the instance's finished recoveries; None if unknown."""
    recoveries = getattr(progress, 'recoveries', None)
    if recoveries is None:
        return None
    return {r.id for r in recoveries()
            if r.state not in statuses.UNFINISHED_RECOVERY_STATES}
