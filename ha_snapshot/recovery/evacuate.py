"""``evacuate``: bring a server of a failed compute host back elsewhere,
with its data.

The host monitor (ha_snapshot.manager.evacuation) runs it for each
protected server of a host it fenced; the Nova hook runs it for a server
someone else (Masakari, an operator) evacuated, to restore its data. The
steps, each recorded on the recovery before it starts:

``inspect-server``
    ``GET /servers/{id}``: Nova must still have it, booted from an image.
``evacuate-server``
    Skipped when Nova already runs the server on another host than the
    failed one (the database's host for it): someone else evacuated it,
    only its data is restored. Else ``evacuate`` at microversion 2.95
    (the server lands SHUTOFF: its stale disk never boots), or 2.14 where
    2.95 is not offered (ha_snapshot.openstack.evacuation).
``wait-evacuated``
    Until Nova names another host, with no task left, for at most
    ``[recovery] rebuild_timeout``. (``stop-server`` after a 2.14
    evacuation, which lands the server running its stale disk.)
``find-image`` ... ``wait-rebuilt``
    As the rebuild action: the newest restore point becomes a Glance
    image, the stopped server is rebuilt from it (Nova keeps it stopped;
    one someone else evacuated and Nova runs is stopped first).
``move-protection``
    The database places the server on its new host, so the agent there
    may register it and the one of the failed host, if it comes back,
    is told the server moved.
``stop-rebuilt``, ``rebaseline``
    (As the rebuild action, for a server Nova left ACTIVE.) The agent of
    the new host starts protecting the stopped server from
    the restore point used (it is sent what it needs: the project and
    the protection spec): its next delta is an increment on that point,
    not the whole disk, and holds what the guest writes from its first
    instruction on.
``start-rebuilt``, ``wait-running``
    As the rebuild action: ``os-start``, until ACTIVE.
``cleanup-images``
    As the rebuild action.

Run again after a manager restart or a takeover, it does not evacuate a
server that already moved, does not rebuild one that runs the recovery
image, goes on from ``move-protection`` or ``rebaseline`` as recorded
(the server still stopped), and after the re-baseline only starts the
server and waits for it.
"""

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.openstack import clients
from ha_snapshot.openstack import evacuation
from ha_snapshot.openstack import images
from ha_snapshot.openstack import servers
from ha_snapshot import protection_spec
from ha_snapshot.recovery import rebuild

LOG = logging.getLogger(__name__)

# NOTE: steps after which Nova may already have the evacuation request.
_EVACUATION_SENT = ('evacuate-server', 'wait-evacuated', 'stop-server')
# NOTE: steps reached once the server ran the recovery image on its new
# host, stopped (the database may already place it there).
_MOVED = ('move-protection',) + rebuild._REBUILT
# NOTE: steps reached once the database placed it on its new host.
_PLACED = rebuild._REBUILT


class EvacuateAction(rebuild.RebuildAction):

    name = 'evacuate'

    def __init__(self, conf, agent_api=None, store=None, db=None,
                 connect=clients.connection):
        super().__init__(conf, agent_api=agent_api, store=store,
                         connect=connect)
        self.db = db

    def recover(self, instance, restore_point: str, progress) -> dict:
        if self.store is None or self.agent_api is None or self.db is None:
            raise exception.ConfigurationError(
                reason='the evacuate recovery action needs the store, the '
                'agent API and the database: load it through the manager '
                'service')
        uuid = instance.uuid
        resumed_at = getattr(progress, 'previous_step', None)

        progress('inspect-server')
        nova = self._proxy('nova', 'compute', 'Nova')
        server = servers.get(nova, uuid)
        if servers.image_id(server) is None:
            raise exception.EvacuationFailed(
                server=uuid, reason='it boots from a volume; the evacuate '
                'action only restores servers booted from an image (its '
                'volume is Cinder\'s: evacuate it with Nova or Masakari)')
        failed_host = instance.host
        if resumed_at in _MOVED:
            LOG.info('Instance %s: evacuated and rebuilt before the manager '
                     'stopped (at %s)', uuid, resumed_at)
            image_id = servers.image_id(server)
            glance = self._proxy('glance', 'image', 'Glance')
        else:
            server = self._evacuate(nova, server, failed_host, resumed_at,
                                    progress)
            glance, image_id, server = self._rebuild(
                nova, server, instance, restore_point, resumed_at, progress)
        new_host = server.compute_host

        if resumed_at not in _PLACED:
            progress('move-protection')
            self.db.update_instance(uuid, host=new_host,
                                    fence=getattr(progress, 'fence', None))
            LOG.warning('Instance %s: moved from failed host %s to %s',
                        uuid, failed_host, new_host)
        result = None
        if resumed_at not in rebuild._REBASELINED:
            server = self._stopped(nova, server, image_id, progress)
            progress('rebaseline')
            spec = protection_spec.ProtectionSpec(
                nova=True, uuid=uuid, name=server.name,
                policy=instance.policy or None)
            result = self.agent_api.rebaseline(
                new_host, uuid, restore_point,
                timeout=self.conf.recovery.timeout,
                project=instance.project_id, spec=spec)
            if (result or {}).get('full'):
                LOG.warning('Instance %s: the agent on %s sends the whole '
                            'disk', uuid, new_host)
            rebuild.log_disks(uuid, new_host, restore_point, result)
        if resumed_at != 'cleanup-images':
            server = self._start(nova, uuid, image_id, progress)

        progress('cleanup-images')
        pruned = images.prune(
            glance, uuid, self.conf.recovery.keep_images, image_id,
            recovery=rebuild.recovery_id(progress),
            finished=rebuild.finished_recoveries(progress))
        LOG.info('Instance %s evacuated from %s to %s and restored to restore '
                 'point %s (image %s); %d old recovery images deleted', uuid,
                 failed_host, new_host, restore_point, image_id, len(pruned))
        return {'instance': uuid, 'restore_point': restore_point,
                'image': image_id, 'from_host': failed_host,
                'host': new_host, 'rebaseline': result,
                'images_deleted': pruned}

    def _evacuate(self, nova, server, failed_host, resumed_at, progress):
        """evacuate-server, wait-evacuated (stop-server): the server on
        its new host, stopped unless someone else's evacuation started
        it."""
        conf = self.conf.recovery
        uuid = server.id
        ours = True
        if server.compute_host and server.compute_host != failed_host:
            ours = resumed_at in _EVACUATION_SENT
            if not ours:
                LOG.warning('Instance %s: already evacuated from %s to %s '
                            'by someone else (Nova, Masakari, an operator):'
                            ' only its data is restored', uuid, failed_host,
                            server.compute_host)
            stopped = server.status == 'SHUTOFF'
        elif resumed_at in _EVACUATION_SENT and server.task_state is not None:
            LOG.info('Instance %s: Nova is evacuating it already (task %s)',
                     uuid, server.task_state)
            stopped = True
        else:
            progress('evacuate-server')
            stopped = evacuation.evacuate(nova, uuid)
        progress('wait-evacuated')
        server = evacuation.wait_evacuated(
            nova, uuid, failed_host, timeout=conf.rebuild_timeout,
            interval=conf.rebuild_poll_interval)
        if ours and not stopped and server.status == 'ACTIVE':
            # NOTE: before 2.95 an evacuated server boots its stale disk:
            # stopped at once, its disk replaced while it is stopped.
            progress('stop-server')
            servers.stop(nova, server, evacuation.ERRORS)
            server = servers.wait_stopped(
                nova, uuid, timeout=conf.rebuild_timeout,
                interval=conf.rebuild_poll_interval,
                errors=evacuation.ERRORS)
        return server
