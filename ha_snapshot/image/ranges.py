"""The ranges an image (or an overlay alone) holds, and reading them fast.

An extent is (offset, length, kind) in guest bytes. ``data`` extents are
read with ``os.pread`` at the host offset qemu-img reports (valid because
inspection refused encryption and external data files); compressed
clusters, which have no host offset, make the whole file go through a
temporary sparse raw copy instead.
"""

import contextlib
import dataclasses
import os
import tempfile

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.image import qcow2
from ha_snapshot.image import qemu

LOG = logging.getLogger(__name__)

DATA = qcow2.DATA
ZERO = qcow2.ZERO


@dataclasses.dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    kind: str
    host_offset: int | None = None


def own_extents(info: image_inspect.ImageInfo,
                limits: qemu.Limits | None = None) -> list:
    """The extents held by the file itself (depth 0), sorted, merged.

    A qcow2 file is read by the pure-Python reader
    (:mod:`ha_snapshot.image.qcow2`, no process, opens nothing but the
    file) when it handles the file; otherwise, and for raw files, by
    ``qemu-img map`` under prlimit. Both give the same extents (tested on
    generated and hostile files).
    """
    if info.format == 'qcow2':
        layout = info.layout
        if layout is None:
            try:
                layout = qcow2.read_layout(
                    info.path, max_virtual_size=info.virtual_size)
            except exception.Qcow2Unsupported as e:
                LOG.debug('%s; mapping it with qemu-img', e)
        if layout is not None:
            if (layout.virtual_size != info.virtual_size
                    or layout.cluster_size != info.cluster_size):
                raise exception.UnsafeImage(
                    path=info.path, reason='its header changed since it '
                    'was inspected (virtual size %d, cluster size %d)'
                    % (layout.virtual_size, layout.cluster_size))
            return [Extent(o, n, k, h) for o, n, k, h in layout.extents]
    return _map_extents(info, limits)


def _map_extents(info, limits) -> list:
    entries = qemu.map_ranges(info.path, info.format, limits=limits)
    extents = []
    end = 0
    for e in entries:
        try:
            start, length = int(e['start']), int(e['length'])
            depth = int(e.get('depth', 0))
        except (KeyError, TypeError, ValueError):
            raise exception.QemuImgError(path=info.path,
                                         reason='malformed map entry %r' % e)
        if start < end or length <= 0 or start + length > info.virtual_size:
            raise exception.QemuImgError(
                path=info.path, reason='map entry out of bounds %r' % e)
        end = start + length
        if depth != 0 or not e.get('present', True):
            continue
        if info.format == 'raw' and not e.get('data'):
            # NOTE: holes of a raw file read as zeros; they are not changes.
            continue
        if e.get('zero'):
            kind, host = ZERO, None
        elif e.get('data'):
            kind, host = DATA, e.get('offset')
        else:
            continue
        prev = extents[-1] if extents else None
        if (prev and prev.kind == kind and prev.offset + prev.length == start
                and (kind == ZERO or (prev.host_offset is not None
                                      and host is not None
                                      and prev.host_offset + prev.length
                                      == host))):
            extents[-1] = Extent(prev.offset, prev.length + length, kind,
                                 prev.host_offset)
        else:
            extents.append(Extent(start, length, kind, host))
    return extents


class Reader:
    """Reads guest ranges of one inspected file."""

    def __init__(self, path: str, by_host_offset: bool):
        self._fd = os.open(path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
        self._path = path
        self._by_host = by_host_offset

    def read(self, extent: Extent, start: int, length: int) -> bytes:
        """Bytes ``[start, start+length)`` of guest space inside ``extent``."""
        if self._by_host:
            pos = extent.host_offset + (start - extent.offset)
        else:
            pos = start
        data = os.pread(self._fd, length, pos)
        if len(data) != length:
            raise exception.ImageError(
                path=self._path,
                reason='truncated: %d bytes at %d, got %d'
                % (length, pos, len(data)))
        return data

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def open_reader(info: image_inspect.ImageInfo, extents: list,
                limits: qemu.Limits | None = None,
                tmpdir: str | None = None):
    """Yield a Reader for ``extents`` (from :func:`own_extents`)."""
    direct = info.format == 'raw' or all(
        e.host_offset is not None for e in extents if e.kind == DATA)
    if direct:
        reader = Reader(info.path, by_host_offset=info.format != 'raw')
        try:
            yield reader
        finally:
            reader.close()
        return
    with tempfile.TemporaryDirectory(dir=tmpdir) as d:
        raw = os.path.join(d, 'flat.raw')
        qemu.convert_to_raw(info.path, info.format, raw, limits=limits)
        reader = Reader(raw, by_host_offset=False)
        try:
            yield reader
        finally:
            reader.close()
