"""Deltas built from inspected images: the changed ranges of one frozen
overlay (:func:`from_image`), or of one overlay per disk placed in a
concatenated space (:func:`from_images`, ha_snapshot/disk_layout.py), cut
into parts of bounded size (:func:`plan_parts`) that are read,
compressed and checksummed lazily, one part at a time.

The wire format (header, parts, container, checks) is
ha_snapshot/delta.py.

May import ha_snapshot.delta and ha_snapshot.image; must not import
ha_snapshot.storage.
"""

import contextlib
import dataclasses
import hashlib

import zstandard

from ha_snapshot import codec
from ha_snapshot import delta as delta_mod
from ha_snapshot import disk_layout
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.image import qemu
from ha_snapshot.image import ranges

DATA = delta_mod.DATA


def plan_parts(extents, max_part_bytes: int, max_part_extents: int):
    """Split extents into parts: lists of (offset, length, kind, host)."""
    parts, cur, cur_bytes = [], [], 0
    for ext in extents:
        offset, remaining = ext.offset, ext.length
        while remaining:
            if ext.kind == DATA:
                room = max_part_bytes - cur_bytes
                if room == 0 or len(cur) >= max_part_extents:
                    parts.append(cur)
                    cur, cur_bytes = [], 0
                    continue
                take = min(room, remaining)
                cur_bytes += take
            else:
                if len(cur) >= max_part_extents:
                    parts.append(cur)
                    cur, cur_bytes = [], 0
                take = remaining
            cur.append((offset, take, ext.kind, ext))
            offset += take
            remaining -= take
    if cur:
        parts.append(cur)
    return parts


def from_image(info: image_inspect.ImageInfo, *, instance: str, project: str,
               sequence: int, parent: str | None, max_part_bytes: int,
               max_part_extents: int, compression_level: int = 3,
               limits: qemu.Limits | None = None,
               tmpdir: str | None = None, full: bool = False,
               taken_at: float | None = None,
               consistency: str = 'crash') -> delta_mod.Delta:
    """Build the delta of an inspected file's own ranges.

    A full delta (``full``, or any with ``parent=None``) is a whole image:
    its zero extents are dropped, since it starts from all zeros. The file
    stays open (through the returned delta's lazy parts) only while parts
    are being produced. ``taken_at``: when the snapshot was asked for.
    """
    return from_images(
        [info], None, instance=instance, project=project,
        sequence=sequence, parent=parent, max_part_bytes=max_part_bytes,
        max_part_extents=max_part_extents,
        compression_level=compression_level, limits=limits, tmpdir=tmpdir,
        full=full, taken_at=taken_at, consistency=consistency)


@dataclasses.dataclass(frozen=True)
class _Placed(ranges.Extent):
    """An extent of disk ``disk`` moved to its place in the concatenated
    space; ``own`` is the extent as its file has it."""
    disk: int = 0
    own: ranges.Extent | None = None


def from_images(infos: list, disks: list | None, *, instance: str,
                project: str, sequence: int, parent: str | None,
                max_part_bytes: int, max_part_extents: int,
                compression_level: int = 3,
                limits: qemu.Limits | None = None,
                tmpdir: str | None = None, full: bool = False,
                taken_at: float | None = None,
                consistency: str = 'crash') -> delta_mod.Delta:
    """The delta of several inspected files, one per disk of the layout
    ``disks`` (ha_snapshot/disk_layout.py, in its order), each file's own
    ranges at its disk's offset; ``disks`` None: one file, one disk (see
    :func:`from_image`)."""
    full = full or parent is None
    if disks is None:
        if len(infos) != 1:
            raise ValueError('several images need a disk layout')
        offsets, virtual_size = [0], infos[0].virtual_size
    else:
        if len(infos) != len(disks):
            raise ValueError('%d images for %d disks' % (len(infos),
                                                         len(disks)))
        offsets = [d['offset'] for d in disks]
        for info, d in zip(infos, disks):
            if info.virtual_size != d['size']:
                raise ValueError('disk %s: the image holds %d bytes, the '
                                 'layout says %d' % (d['target'],
                                                     info.virtual_size,
                                                     d['size']))
        virtual_size = disk_layout.total_size(disks)
    per_disk, extents = [], []
    for i, (info, base) in enumerate(zip(infos, offsets)):
        own = ranges.own_extents(info, limits=limits)
        if full:
            own = [e for e in own if e.kind == DATA]
        per_disk.append(own)
        extents += [_Placed(e.offset + base, e.length, e.kind, e.host_offset,
                            disk=i, own=e) for e in own]
    plan = plan_parts(extents, max_part_bytes, max_part_extents)
    header = delta_mod.DeltaHeader(
        instance=instance, project=project, sequence=sequence, parent=parent,
        virtual_size=virtual_size, cluster_size=infos[0].cluster_size,
        part_count=len(plan),
        changed_bytes=sum(e.length for e in extents),
        data_bytes=sum(e.length for e in extents if e.kind == DATA),
        full=full, taken_at=taken_at, consistency=consistency,
        disks=disks)

    def source():
        cctx = zstandard.ZstdCompressor(level=compression_level)
        with contextlib.ExitStack() as stack:
            readers = [stack.enter_context(ranges.open_reader(
                info, own, limits=limits, tmpdir=tmpdir))
                for info, own in zip(infos, per_disk)]
            for index, items in enumerate(plan):
                buf = bytearray()
                for offset, length, kind, ext in items:
                    if kind == DATA:
                        buf += readers[ext.disk].read(
                            ext.own, offset - offsets[ext.disk], length)
                raw = bytes(buf)
                # NOTE: data that does not shrink travels as is: the
                # manager then has nothing to decompress.
                packed = codec.compress_if_it_pays(raw, cctx)
                yield delta_mod.DeltaPart(
                    instance=instance, sequence=sequence, index=index,
                    extents=[(o, n, k) for o, n, k, _ in items],
                    raw_size=len(raw),
                    sha256=hashlib.sha256(raw).hexdigest(),
                    payload=raw if packed is None else packed,
                    compression='none' if packed is None else 'zstd')
    return delta_mod.Delta(header, source=source)
