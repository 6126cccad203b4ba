"""Fetch a restore point from the manager into a local qcow2 file.

Chunk by chunk over the bus, each checked against the sha256 its manifest
names, into a sparse raw file converted to qcow2 at the end. A chunk that
does not match is an error: the VM is never started on unverified data.
"""

import base64
import hashlib

from ha_snapshot import exception
from ha_snapshot.image import sparse


def fetch(manager_api, instance: str, restore_point: str | None,
          dest: str, limits=None) -> dict:
    manifest = manager_api.get_manifest(instance, restore_point)

    def chunks():
        for key, sha in sorted(manifest['chunks'].items(),
                               key=lambda kv: int(kv[0])):
            index = int(key)
            data = base64.b64decode(manager_api.get_chunk(
                instance, manifest['id'], index))
            if hashlib.sha256(data).hexdigest() != sha:
                raise exception.HaSnapshotException(
                    'Chunk %d of restore point %s of %s does not match '
                    'its checksum; not starting on it.'
                    % (index, manifest['id'], instance))
            yield index * manifest['chunk_size'], data
    sparse.write_image(dest, manifest['virtual_size'], chunks(),
                       fmt='qcow2', limits=limits)
    return manifest
