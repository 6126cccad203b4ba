"""Recovery images of deleted servers, removed from Glance.

The rebuild action leaves up to ``[recovery] keep_images`` recovery images
per server in Glance (private: the server's project or the service
project). Once Nova has deleted the server (``instance.delete.end``: the
instance is ``deleted`` in the database) they serve nobody and count
against the project's image quota. Every ``[recovery]
image_sweep_interval`` seconds the manager lists the images tagged
``ha_snapshot`` once and deletes those whose instance its database knows
as deleted; an instance it does not know (another region's manager, an
image made by hand) is left alone, and so is every image of an instance
with a recovery in progress (Nova may delete a server while it is being
rebuilt: its recovery, not the sweep, owns that upload). Glance
unreachable, or a delete it refuses, is logged and tried again at the next
sweep.

With several manager replicas on one database the sweep runs on one at a
time: before each round a replica takes (or, holding it, renews) the
leader lease ``leader:image-sweep`` for ``image_sweep_interval +
[manager_cluster] lease_duration`` seconds; a replica that cannot skips
the round. The leader keeps the lease from round to round, so the others
sweep only once it stopped (it releases the lease) or died (the lease
expires). One replica alone always gets it.

May import the database, ha_snapshot.manager.membership,
ha_snapshot.openstack and ha_snapshot.exception.
"""

import threading

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.manager import membership as membership_mod
from ha_snapshot.openstack import clients
from ha_snapshot.openstack import images
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

LEADER_LEASE = 'leader:image-sweep'


def wanted(conf) -> bool:
    """Whether this manager may have made recovery images to sweep: the
    sweep is on, an instance may be rebuilt, and Glance is configured
    (without [glance] credentials no rebuild could have uploaded one)."""
    actions = set(conf.recovery.actions.values()) | {conf.recovery.action}
    return (conf.recovery.image_sweep_interval > 0 and 'rebuild' in actions
            and bool(conf.glance.auth_type or conf.glance.auth_section))


class ImageSweeper:
    """``membership``: this replica among several (manager.membership);
    rounds then run only while it holds the leader lease."""

    def __init__(self, conf, db, connect=clients.connection,
                 membership=None):
        self.conf = conf
        self.db = db
        self._connect = connect
        self.membership = membership
        self.leader = membership_mod.Leader(
            membership, LEADER_LEASE, self._lease_duration, 'Image sweep')
        self._stop = threading.Event()
        self._thread = None

    @property
    def lease(self):
        return self.leader.lease

    def lead(self) -> bool:
        """Take or renew the leader lease; whether this replica leads
        this round (always, without membership)."""
        return self.leader.lead()

    def run_once(self) -> list | None:
        """One round: the sweep if this replica leads, else None."""
        if not self.lead():
            LOG.debug('Image sweep: round skipped, another replica holds '
                      '%s', LEADER_LEASE)
            return None
        return self.sweep()

    def _lease_duration(self) -> float:
        return (self.conf.recovery.image_sweep_interval
                + self.conf.manager_cluster.lease_duration)

    def sweep(self) -> list:
        """Delete the recovery images of deleted instances; their ids."""
        glance = self._connect(self.conf, 'glance').image
        deleted_instances = {}
        removed = []
        for image in glance.images(tag=images.TAG):
            instance = (image.properties or {}).get(images.PROP_INSTANCE)
            if not instance or images.instance_tag(instance) not in (
                    image.tags or ()):
                continue
            if instance not in deleted_instances:
                deleted_instances[instance] = self._sweepable(instance)
            if deleted_instances[instance] and images.delete(glance,
                                                             image.id):
                LOG.info('Recovery image %s of deleted instance %s deleted',
                         image.id, instance)
                removed.append(image.id)
        return removed

    def _sweepable(self, instance: str) -> bool:
        """Deleted, with no recovery in progress."""
        try:
            row = self.db.get_instance(instance)
        except exception.InstanceNotFound:
            return False
        if row.status != statuses.InstanceStatus.DELETED:
            return False
        busy = self.db.list_recoveries(
            instance, state=statuses.UNFINISHED_RECOVERY_STATES)
        if busy:
            LOG.info('Recovery images of deleted instance %s kept: '
                     'recovery %s is in progress', instance, busy[-1].id)
            return False
        return True

    def _run(self) -> None:
        interval = self.conf.recovery.image_sweep_interval
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except (exception.HaSnapshotException,) + clients.API_ERRORS as e:
                LOG.warning('Sweep of recovery images failed (tried again '
                            'in %s s): %s', interval,
                            clients.error_reason(e))
            except Exception:
                LOG.exception('Sweep of recovery images failed (tried '
                              'again in %s s)', interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='image-sweep')
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.leader.release()
