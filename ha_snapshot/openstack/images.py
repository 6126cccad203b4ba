"""Recovery images in Glance: create, stream up, find again, prune.

A recovery image belongs to one instance, one restore point and the one
recovery that uploaded it. It is tagged ``ha_snapshot`` and
``ha_snapshot:<instance>`` and carries the properties
``ha_snapshot_instance``, ``ha_snapshot_restore_point``,
``ha_snapshot_recovery`` (the recovery's id), ``ha_snapshot_lease_
generation`` (the generation of the recovery lease it was made under, with
several manager replicas), ``ha_snapshot_size`` (the bytes uploaded) and
``ha_snapshot_source_image``. So a recovery run again (a manager restarted
mid-way, or another replica that took the recovery over) finds the image
of *its* recovery: reused if complete, deleted and uploaded again if the
upload was left unfinished. Images of other recoveries are never deleted
here except by :func:`prune`, and only those of finished recoveries.
Images made before recoveries were recorded on them (no
``ha_snapshot_recovery``) count as of finished recoveries.

The upload is one ``PUT /v2/images/{id}/file`` whose body is read from the
exported file in small blocks as the socket takes them (Content-Length
known up front, nothing held in memory), hashed on the way and checked
against what Glance computed.

May import ha_snapshot.exception and ha_snapshot.openstack.clients; takes
openstacksdk image proxies.
"""

import hashlib
import os

from openstack import exceptions as sdk_exc
from openstack.image.v2 import image as image_res
from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.openstack import clients

LOG = logging.getLogger(__name__)

_API_ERRORS = clients.API_ERRORS
_reason = clients.error_reason

TAG = 'ha_snapshot'
PROP_INSTANCE = 'ha_snapshot_instance'
PROP_RESTORE_POINT = 'ha_snapshot_restore_point'
PROP_SOURCE = 'ha_snapshot_source_image'
PROP_RECOVERY = 'ha_snapshot_recovery'
PROP_GENERATION = 'ha_snapshot_lease_generation'
PROP_SIZE = 'ha_snapshot_size'
# NOTE: Glance statuses of an upload that has not ended (queued: created,
# no data yet; saving: data arriving; uploading/importing: the import
# flow) or that ended without data (killed).
UNFINISHED = ('queued', 'saving', 'uploading', 'importing', 'killed')
READ_BLOCK = 1 << 20
# NOTE: image properties that describe the guest, not the bytes: a
# rebuilt server must boot the same way (firmware, disk bus, machine
# type...), so they are copied from the image the server ran before.
INHERITED_PREFIXES = ('hw_', 'os_', 'img_')
INHERITED_KEYS = ('architecture', 'hypervisor_type', 'vm_mode', 'min_disk',
                  'min_ram', 'auto_disk_config')
NOT_INHERITED = ('os_hash_algo', 'os_hash_value', 'os_hidden')


def instance_tag(instance: str) -> str:
    return '%s:%s' % (TAG, instance)


class HashingReader:
    """A file read front to back, hashed (sha512) as it is read.

    requests sends a body with ``read`` in blocks; ``len`` gives it the
    Content-Length. A seek elsewhere than where hashing stands (a client
    rewinding to retry) invalidates the hashes instead of lying.
    """

    def __init__(self, path: str):
        self.file = open(path, 'rb')
        self.size = os.fstat(self.file.fileno()).st_size
        self.sha512 = hashlib.sha512()
        self.hashed = 0
        self.valid = True
        self.largest_read = 0

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > READ_BLOCK:
            n = READ_BLOCK
        pos = self.file.tell()
        data = self.file.read(n)
        if pos != self.hashed:
            self.valid = False
        elif data:
            self.sha512.update(data)
            self.hashed += len(data)
        self.largest_read = max(self.largest_read, len(data))
        return data

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def find(glance, instance: str, restore_point: str | None = None,
         disk_format: str | None = None) -> list:
    """Recovery images of ``instance`` (of one restore point, in one disk
    format, if given), newest first."""
    found = []
    for image in glance.images(tag=instance_tag(instance)):
        props = image.properties or {}
        if props.get(PROP_INSTANCE) != instance:
            continue
        if restore_point and props.get(PROP_RESTORE_POINT) != restore_point:
            continue
        if disk_format and image.disk_format != disk_format:
            continue
        found.append(image)
    found.sort(key=lambda i: i.created_at or '', reverse=True)
    return found


def recovery_of(image) -> str | None:
    """The id of the recovery that uploaded ``image`` (None: made before
    images named their recovery)."""
    return (image.properties or {}).get(PROP_RECOVERY)


def complete(image) -> bool:
    """Active, and holding every byte its uploader meant to send (when it
    recorded how many)."""
    if image.status != 'active':
        return False
    expected = (image.properties or {}).get(PROP_SIZE)
    return expected is None or str(image.size) == str(expected)


def find_reusable(glance, instance: str, restore_point: str,
                  disk_format: str, recovery: str | None = None,
                  may_delete=None):
    """A complete image of this restore point if one exists, this
    recovery's own first, else one of an earlier recovery's.

    Images of ``recovery`` left unfinished (queued, saving...: its earlier
    runner stopped mid-upload, a dead replica whose lease was taken over)
    are deleted: the caller holds that recovery's lease, so nobody writes
    them any more, and a fresh upload is the way to a whole image.
    ``may_delete()`` is asked first and must say the lease is still held.
    Images of other recoveries are never deleted here.
    """
    own, earlier = None, None
    for image in find(glance, instance, restore_point, disk_format):
        mine = recovery is not None and recovery_of(image) == recovery
        if complete(image):
            if mine and own is None:
                own = image
            elif not mine and earlier is None:
                earlier = image
        elif mine and image.status in UNFINISHED:
            made = (image.properties or {}).get(PROP_GENERATION)
            if may_delete is not None and not may_delete():
                LOG.warning('Instance %s: unfinished recovery image %s '
                            'left alone: recovery %s is no longer this '
                            "replica's", instance, image.id, recovery)
                continue
            LOG.info('Instance %s: deleting unfinished recovery image %s '
                     '(%s, left by recovery %s at lease generation %s)',
                     instance, image.id, image.status, recovery,
                     made or 'unknown')
            delete(glance, image.id)
    return own or earlier


def inheritable_properties(glance, image_id: str | None) -> dict:
    """Guest-describing properties of ``image_id``; {} if it is gone."""
    if not image_id:
        return {}
    try:
        resp = glance.get('/images/%s' % image_id)
        if resp.status_code == 404:
            LOG.warning('Source image %s is gone from Glance: the recovery '
                        'image gets no hw_*/os_* properties from it',
                        image_id)
            return {}
        sdk_exc.raise_from_response(resp)
        body = resp.json()
    except _API_ERRORS as e:
        raise exception.OpenStackError(
            service='Glance', reason='reading source image %s: %s'
            % (image_id, _reason(e)))
    out = {}
    for key, value in body.items():
        if key in NOT_INHERITED or key.startswith('os_glance'):
            continue
        if key in INHERITED_KEYS or key.startswith(INHERITED_PREFIXES):
            if value not in (None, ''):
                out[key] = value
    return out


def create(glance, *, name: str, instance: str, restore_point: str,
           disk_format: str, source_image: str | None, owner: str | None,
           properties: dict, recovery: str | None = None,
           generation: int | None = None, size: int | None = None):
    """Create the image record (queued); ``owner`` None: the caller's.
    ``recovery``, ``generation`` and ``size`` are recorded on it when
    given (the recovery uploading it, its lease generation, the bytes it
    is going to hold).

    If Glance refuses to let the service user give the image to another
    project (403), it is created in the service user's project instead.
    """
    attrs = dict(properties)
    attrs.update({
        'name': name, 'disk_format': disk_format,
        'container_format': 'bare', 'visibility': 'private',
        'tags': [TAG, instance_tag(instance)],
        PROP_INSTANCE: instance, PROP_RESTORE_POINT: restore_point})
    if source_image:
        attrs[PROP_SOURCE] = source_image
    # NOTE: Glance's additional properties are strings.
    for key, value in ((PROP_RECOVERY, recovery),
                       (PROP_GENERATION, generation), (PROP_SIZE, size)):
        if value is not None:
            attrs[key] = str(value)
    if owner:
        attrs['owner'] = owner
    try:
        try:
            return image_res.Image.new(**attrs).create(glance)
        except sdk_exc.ForbiddenException as e:
            if not owner:
                raise
            LOG.warning('Glance refused image owner %s (%s): the recovery '
                        'image of %s stays in the service project; give the '
                        'service user the admin role or set [recovery] '
                        'image_owner = service', owner, _reason(e), instance)
            del attrs['owner']
            return image_res.Image.new(**attrs).create(glance)
    except _API_ERRORS as e:
        raise exception.ImageUploadFailed(
            image=name, instance=instance,
            reason='creating the image record: %s' % _reason(e))


def upload(glance, image, path: str, instance: str,
           may_delete=None) -> dict:
    """Stream ``path`` into ``image``; check Glance got every byte.

    A failed upload deletes the image, once ``may_delete()`` (if given)
    says the caller still holds the recovery it belongs to.
    """
    def give_up():
        # NOTE: never hides the upload's own error: whatever goes wrong
        # here is logged. The lease check and the delete are not one
        # transaction, and need not be: the image is this run's own (a
        # replica that took the recovery over uploads into its own image
        # and reuses only complete ones), so deleting it late takes
        # nothing from anyone.
        try:
            if may_delete is None or may_delete():
                delete(glance, image.id)
            else:
                LOG.warning('Instance %s: failed recovery image %s left to '
                            'the replica that took its recovery over',
                            instance, image.id)
        except Exception as e:
            LOG.warning('Instance %s: failed recovery image %s not deleted '
                        '(%s: %s); the image sweep removes it', instance,
                        image.id, type(e).__name__, e)
    try:
        with HashingReader(path) as reader:
            resp = image.upload(glance, data=reader)
            sdk_exc.raise_from_response(resp)
            stored = glance.get_image(image.id)
    except _API_ERRORS as e:
        give_up()
        raise exception.ImageUploadFailed(
            image=image.id, instance=instance,
            reason='uploading %s: %s' % (os.path.basename(path), _reason(e)))
    problem = None
    if stored.status != 'active':
        problem = 'it is %s after the upload, not active' % stored.status
    elif stored.size != reader.size:
        problem = 'Glance stored %s bytes of %d' % (stored.size, reader.size)
    elif (reader.valid and stored.hash_algo == 'sha512'
            and stored.hash_value != reader.sha512.hexdigest()):
        problem = 'its sha512 differs from the uploaded file\'s'
    if problem:
        give_up()
        raise exception.ImageUploadFailed(image=image.id, instance=instance,
                                          reason=problem)
    LOG.info('Instance %s: recovery image %s uploaded (%d bytes, %s)',
             instance, image.id, reader.size, image.disk_format)
    return {'image': image.id, 'size': reader.size,
            'largest_read': reader.largest_read}


def delete(glance, image_id: str) -> bool:
    """Delete an image; False (logged) if Glance would not."""
    try:
        glance.delete_image(image_id, ignore_missing=True)
        return True
    except _API_ERRORS as e:
        LOG.warning('Could not delete recovery image %s: %s', image_id,
                    _reason(e))
        return False


def prune(glance, instance: str, keep: int, current: str | None,
          recovery: str | None = None, finished=None) -> list:
    """Delete the recovery images of ``instance`` beyond the ``keep``
    newest, ``current`` (the one the server now runs from) counting first.
    Return the ids deleted.

    Only images of finished recoveries are touched: ``finished`` is the
    set of ids of the instance's finished recoveries (None: every image
    counts as of a finished one); images that name no recovery (made
    before images named theirs) count as finished. ``recovery`` is the
    caller's own, held: its images other than ``current`` duplicate it (an
    upload a stalled runner finished late) and go whatever ``keep`` says.
    An image of a finished recovery that never became active goes too,
    without counting. Images of recoveries in progress, or unknown to the
    caller, stay untouched and uncounted.
    """
    kept, doomed = [], []
    for image in find(glance, instance):
        made_by = recovery_of(image)
        if image.id == current:
            kept.insert(0, image)
        elif recovery is not None and made_by == recovery:
            doomed.append(image)
        elif (made_by is not None and finished is not None
                and made_by not in finished):
            LOG.debug('Instance %s: recovery image %s of recovery %s (not '
                      'finished) left alone', instance, image.id, made_by)
        elif image.status in UNFINISHED:
            doomed.append(image)
        else:
            kept.append(image)
    doomed.extend(kept[keep:])
    deleted = []
    for image in doomed:
        if delete(glance, image.id):
            deleted.append(image.id)
    return deleted
