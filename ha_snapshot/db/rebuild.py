"""Rebuild the database from the recovery store (DESIGN: the store alone is
enough to rebuild the manager's database).

May import ha_snapshot.exception; the Database and the RecoveryStore are
passed in.
"""

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)


def rebuild_from_store(db, store, *,
                       status: str = statuses.InstanceStatus.PROTECTED
                       ) -> dict:
    """Make the database hold what a RecoveryStore holds.

    Creates missing instances (project from their manifests, ``status``
    for new rows, host unknown) and restore points, and forgets
    recorded restore points the store no longer has. Rows already right
    are left alone, so running it twice changes nothing. An instance
    whose manifests cannot be read is reported, not fatal.
    """
    result = {'instances_created': 0, 'restore_points_recorded': 0,
              'restore_points_removed': 0, 'failed': []}
    for uuid in store.instances():
        try:
            points = store.restore_points(uuid)
            if not points:
                continue
            try:
                recorded, created = db.list_restore_points(uuid), False
            except exception.InstanceNotFound:
                recorded, created = [], True
            # NOTE: idempotent; refuses an instance recorded for another
            # project than its manifests name.
            db.create_instance(uuid, points[-1].project, status=status)
            result['instances_created'] += created
            # NOTE: forget first: a stale row may hold the number or
            # sequence of a restore point made since.
            known = {rp.id for rp in points}
            result['restore_points_removed'] += db.delete_restore_points(
                [row.id for row in recorded if row.id not in known])
            have = {row.id for row in recorded}
            for rp in points:
                db.record_restore_point(rp)
                result['restore_points_recorded'] += rp.id not in have
        except exception.HaSnapshotException as e:
            LOG.error('Rebuild: instance %s skipped: %s', uuid, e)
            result['failed'].append((uuid, str(e)))
    LOG.info('Rebuilt the database from %s: %s', store.driver.describe(),
             result)
    return result
