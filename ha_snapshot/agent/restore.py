"""Fetch a restore point from the manager into local qcow2 files.

Chunk by chunk over the bus, each checked against the sha256 its manifest
names, into a sparse raw file converted to qcow2 at the end. A chunk that
does not match is an error: the VM is never started on unverified data.

A restore point of several disks (ha_snapshot/disk_layout.py) is fetched
disk by disk: :func:`fetch` with the manifest of one disk
(``disk_layout.disk_manifest``), whose chunks are numbered from the
disk's start and asked for at ``first_chunk`` on.
"""

import base64
import hashlib

from ha_snapshot import exception
from ha_snapshot.image import sparse


def fetch(manager_api, instance: str, restore_point: str | None,
          dest: str, limits=None, manifest: dict | None = None) -> dict:
    """Write the restore point (or, given ``manifest``, the one disk of it
    that manifest describes) to ``dest``; returns the manifest."""
    if manifest is None:
        manifest = manager_api.get_manifest(instance, restore_point)
    first = int(manifest.get('first_chunk') or 0)
    size = int(manifest['virtual_size'])
    chunk_size = int(manifest['chunk_size'])

    def chunks():
        for key, sha in sorted(manifest['chunks'].items(),
                               key=lambda kv: int(kv[0])):
            index = int(key)
            data = base64.b64decode(manager_api.get_chunk(
                instance, manifest['id'], first + index))
            if hashlib.sha256(data).hexdigest() != sha:
                raise exception.HaSnapshotException(
                    'Chunk %d of restore point %s of %s does not match '
                    'its checksum; not starting on it.'
                    % (first + index, manifest['id'], instance))
            offset = index * chunk_size
            # NOTE: a disk's last chunk may reach into the zeros between
            # it and the next disk of the point: cut at the disk's end.
            yield offset, data[:size - offset]
    sparse.write_image(dest, size, chunks(), fmt='qcow2', limits=limits)
    return manifest
