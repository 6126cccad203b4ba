"""Offline import of an image or overlay into the store (ha-snapshot-manage).

The first import of an instance takes a whole image, raw or qcow2, as the
baseline; every later one takes a qcow2 overlay whose backing file is the
file imported before it, and applies the overlay's own ranges as a delta.
The overlay is read with a null backing: its backing file is never opened.
"""

import os

from ha_snapshot import delta_images
from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.image import qemu

DEFAULT_PROJECT = 'default'


def import_file(conf, store, instance: str, path: str,
                project: str | None = None):
    """Import ``path`` for ``instance``; return the new restore point."""
    store._check_instance(instance)
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise exception.ImageNotFound(path=path)
    limits = qemu.Limits.from_conf(conf)
    newest = store.newest(instance)
    if newest is None:
        info = image_inspect.inspect(
            path, None, max_virtual_size=conf.image.max_virtual_size,
            limits=limits)
        parent, sequence = None, 0
        project = project or DEFAULT_PROJECT
    else:
        expected = newest.source if newest.source and os.path.exists(
            newest.source) else None
        info = image_inspect.inspect(
            path, 'qcow2', max_virtual_size=conf.image.max_virtual_size,
            allow_backing=True, expected_backing=expected, limits=limits)
        if info.backing_file is None:
            raise exception.UnsafeImage(
                path=path, reason='instance %s already has a baseline; '
                'expected a qcow2 overlay whose backing file is the '
                'previous state, this file has no backing file' % instance)
        if info.virtual_size != newest.virtual_size:
            raise exception.InvalidDelta(
                instance=instance, sequence=newest.delta_sequence + 1,
                reason='virtual size %d does not match the recovery image '
                       '(%d)' % (info.virtual_size, newest.virtual_size))
        parent, sequence = newest.id, newest.delta_sequence + 1
        project = project or newest.project
    delta = delta_images.from_image(
        info, instance=instance, project=project, sequence=sequence,
        parent=parent, max_part_bytes=conf.image.max_part_bytes,
        max_part_extents=conf.image.max_part_extents,
        compression_level=conf.image.compression_level, limits=limits)
    rp = store.merge(delta, source=path)
    store.apply_retention(instance)
    return rp
