"""Write a whole disk image from its non-zero pieces.

What an export (``ha-snapshot-manage image export``, the recovery image of
a rebuild) and the agent's fetch of a restore point both do: a sparse raw
file of the virtual size next to the destination, every piece written at
its offset, fsynced, converted to qcow2 if asked, then renamed onto the
destination. The destination appears whole or not at all; temporary files
are removed on every error, including one raised by the pieces themselves
(a chunk failing its checksum).

May import ha_snapshot.image.qemu only.
"""

import os
import tempfile

from ha_snapshot import exception
from ha_snapshot.image import qemu

FORMATS = ('raw', 'qcow2')


def write_image(out: str, virtual_size: int, pieces, fmt: str = 'raw',
                limits: qemu.Limits | None = None) -> None:
    """Write ``pieces`` ((offset, bytes), any order) as ``out`` in
    ``fmt``; everything else reads as zeros."""
    if fmt not in FORMATS:
        raise exception.HaSnapshotException(
            'Unsupported image format %r: use raw or qcow2.' % fmt)
    out = os.path.abspath(out)
    directory = os.path.dirname(out)
    if not os.path.isdir(directory):
        raise exception.HaSnapshotException(
            'Cannot write %s: directory %s does not exist.'
            % (out, directory))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.ha-image-')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.truncate(virtual_size)
            for offset, data in pieces:
                os.pwrite(f.fileno(), data, offset)
            f.flush()
            os.fsync(f.fileno())
        if fmt == 'qcow2':
            qtmp = tmp + '.qcow2'
            try:
                qemu.convert_raw_to_qcow2(tmp, qtmp, limits=limits)
                os.replace(qtmp, out)
            finally:
                if os.path.exists(qtmp):
                    os.unlink(qtmp)
        else:
            os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
