"""Recovery images of deleted servers, removed from Glance.

The rebuild action leaves up to ``[recovery] keep_images`` recovery images
per server in Glance (private: the server's project or the service
project). Once Nova has deleted the server (``instance.delete.end``: the
instance is ``deleted`` in the database) they serve nobody and count
against the project's image quota. Every ``[recovery]
image_sweep_interval`` seconds the manager lists the images tagged
``ha_snapshot`` once and deletes those whose instance its database knows
as deleted; an instance it does not know (another region's manager, an
image made by hand) is left alone. Glance unreachable, or a delete it
refuses, is logged and tried again at the next sweep.

May import the database, ha_snapshot.openstack and ha_snapshot.exception.
"""

import threading

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.openstack import clients
from ha_snapshot.openstack import images
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)


def wanted(conf) -> bool:
    """Whether this manager may have made recovery images to sweep: the
    sweep is on, an instance may be rebuilt, and Glance is configured
    (without [glance] credentials no rebuild could have uploaded one)."""
    actions = set(conf.recovery.actions.values()) | {conf.recovery.action}
    return (conf.recovery.image_sweep_interval > 0 and 'rebuild' in actions
            and bool(conf.glance.auth_type or conf.glance.auth_section))


class ImageSweeper:

    def __init__(self, conf, db, connect=clients.connection):
        self.conf = conf
        self.db = db
        self._connect = connect
        self._stop = threading.Event()
        self._thread = None

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
                try:
                    row = self.db.get_instance(instance)
                    deleted_instances[instance] = row.status == (
                        statuses.InstanceStatus.DELETED)
                except exception.InstanceNotFound:
                    deleted_instances[instance] = False
            if deleted_instances[instance] and images.delete(glance,
                                                             image.id):
                LOG.info('Recovery image %s of deleted instance %s deleted',
                         image.id, instance)
                removed.append(image.id)
        return removed

    def _run(self) -> None:
        interval = self.conf.recovery.image_sweep_interval
        while not self._stop.wait(interval):
            try:
                self.sweep()
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
