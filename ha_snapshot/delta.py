"""Deltas: the changed ranges of one frozen overlay, ready for the wire.

A delta is a header plus parts of bounded size. Each part lists its extents
(offset, length, kind) and carries the data extents' bytes concatenated,
zstandard-compressed when that pays (as they are when it does not), with
the sha256 of the uncompressed bytes. Zero extents (writes of zeros,
discards) carry no bytes.

A delta built from images (ha_snapshot/delta_images.py) produces its
parts lazily (a 20 GiB baseline never sits in memory); a delta received
from the wire holds them. ``validate`` checks
the structure of either without touching payloads; ``iter_extents`` yields
the bytes part by part, checking each part's size and checksum as it is
decompressed, under a hard decompression limit.

May import ha_snapshot.image; must not import ha_snapshot.storage.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import struct
import time
import uuid

from oslo_utils import uuidutils

from ha_snapshot import codec
from ha_snapshot import disk_layout
from ha_snapshot import exception
from ha_snapshot.image import ranges
from ha_snapshot import statuses

FORMAT_VERSION = 1
DATA = ranges.DATA
ZERO = ranges.ZERO
KINDS = (DATA, ZERO)
CONSISTENCIES = tuple(statuses.Consistency)
# zstd's worst case expansion is far below this; anything larger is hostile.
# NOTE: year 2100: a taken_at beyond it is a garbled header, not a time.
MAX_TIMESTAMP = 4102444800
_MAX_EXPANSION = 1.01
_MAX_OVERHEAD = 4096


@dataclasses.dataclass
class DeltaHeader:
    instance: str
    project: str
    sequence: int
    parent: str | None
    virtual_size: int
    cluster_size: int
    part_count: int
    changed_bytes: int
    data_bytes: int
    created_at: float = dataclasses.field(default_factory=time.time)
    format_version: int = FORMAT_VERSION
    full: bool = False
    """The whole image (a baseline): ranges it does not hold are zeros,
    whatever the parent held. A re-baseline on top of existing restore
    points has a parent and is full."""
    taken_at: float | None = None
    """When the agent asked for the snapshot (its clock, epoch seconds):
    every guest write that ended before this is in the delta's restore
    point. None from agents before RPC 1.3."""
    consistency: str = 'crash'
    """'filesystem' when the snapshot was taken inside a guest file system
    freeze (application-consistent), else 'crash'. Optional on the wire:
    a header without it (an older agent's) is 'crash'."""
    disks: list | None = None
    """The disks of a multi-disk delta (ha_snapshot/disk_layout.py): its
    extents address their concatenated space. None (and absent on the
    wire, as from agents before RPC 1.5): the root disk alone."""


@dataclasses.dataclass
class DeltaPart:
    instance: str
    sequence: int
    index: int
    extents: list
    raw_size: int
    sha256: str = ''
    payload: bytes | None = None
    compression: str = 'zstd'
    decoded: bytes | None = dataclasses.field(default=None, repr=False,
                                              compare=False)
    # NOTE: (chunk size, disk chunk index) -> sha256 of whole chunks of
    # ``decoded``, computed by the manager itself (never from the wire).
    chunk_digests: dict | None = dataclasses.field(default=None, repr=False,
                                                   compare=False)

    def meta(self) -> dict:
        # NOTE: ``decoded`` and ``chunk_digests`` are caches, never
        # serialised.
        return {'instance': self.instance, 'sequence': self.sequence,
                'index': self.index,
                'extents': [list(e) for e in self.extents],
                'raw_size': self.raw_size, 'sha256': self.sha256,
                'compression': self.compression}

    def to_primitive(self) -> dict:
        """JSON-able form (oslo.messaging): the payload in base64."""
        prim = self.meta()
        prim['payload'] = codec.b64encode(self.payload)
        return prim

    def decode(self, header: DeltaHeader) -> bytes:
        """The uncompressed bytes, checked against size and checksum."""
        def bad(reason):
            return exception.InvalidDelta(
                instance=header.instance, sequence=header.sequence,
                reason='part %d: %s' % (self.index, reason))
        if self.payload is None:
            raise bad('no payload')
        if self.compression == 'zstd':
            try:
                raw = codec.decompress(self.payload, self.raw_size)
            except codec.CodecError as e:
                raise bad('corrupt compressed payload: %s' % e)
        elif self.compression == 'none':
            raw = self.payload
        else:
            raise bad('unknown compression %r' % self.compression)
        if len(raw) != self.raw_size:
            raise bad('payload holds %d bytes, raw_size says %d'
                      % (len(raw), self.raw_size))
        if hashlib.sha256(raw).hexdigest() != self.sha256:
            raise bad('checksum mismatch')
        return raw


class Delta:
    """A header and its parts (a list, or a lazy source of parts)."""

    def __init__(self, header: DeltaHeader, parts=None, source=None):
        self.header = header
        self._parts = parts
        self._source = source
        self._plan = None

    @property
    def materialized(self) -> bool:
        return self._parts is not None

    def parts(self):
        if self._parts is not None:
            return iter(self._parts)
        return self._source()

    def to_header_primitive(self) -> dict:
        return header_to_primitive(self.header)

    def to_primitive(self) -> dict:
        """A JSON-able dict (oslo.messaging); materialises every part."""
        return {'header': header_to_primitive(self.header),
                'parts': [p.to_primitive() for p in self.parts()]}

    @classmethod
    def from_primitive(cls, prim) -> 'Delta':
        header = header_from_primitive(prim.get('header')
                                       if isinstance(prim, dict) else None)
        parts = prim.get('parts')
        if not isinstance(parts, list):
            raise _invalid(header, 'parts must be a list')
        return cls(header, [part_from_primitive(header, p) for p in parts])

    def write_to(self, f) -> int:
        """The binary container (spool files, byte streams); returns size.

        ``HSD1``, then length-prefixed JSON header, then per part a
        length-prefixed JSON meta and the raw compressed payload.
        """
        size = _write_block(f, CONTAINER_MAGIC,
                            json.dumps(header_to_primitive(self.header)))
        for part in self.parts():
            size += _write_block(f, b'', json.dumps(part.meta()))
            f.write(struct.pack('>Q', len(part.payload)))
            f.write(part.payload)
            size += 8 + len(part.payload)
        return size

    @classmethod
    def read_from(cls, f, *, max_part_bytes: int) -> 'Delta':
        """Read a container written by :meth:`write_to`; bounded reads."""
        if _read_exact(f, 4, None) != CONTAINER_MAGIC:
            raise exception.InvalidDelta(instance='?', sequence='?',
                                         reason='not a delta container')
        header = header_from_primitive(_read_json(f, None))
        parts = []
        limit = int(max_part_bytes * _MAX_EXPANSION + _MAX_OVERHEAD)
        for _ in range(_int(header.part_count, 'part_count', header)):
            prim = _read_json(f, header)
            (length,) = struct.unpack('>Q', _read_exact(f, 8, header))
            if length > limit:
                raise _invalid(header, 'part payload of %d bytes exceeds '
                               'the limit %d' % (length, limit))
            if not isinstance(prim, dict):
                raise _invalid(header, 'part meta is not a dict')
            prim['payload'] = ''
            part = part_from_primitive(header, prim)
            part.payload = _read_exact(f, length, header)
            parts.append(part)
        if f.read(1):
            raise _invalid(header, 'trailing bytes after the last part')
        return cls(header, parts)

    def validate(self, *, max_virtual_size: int, max_part_bytes: int,
                 max_part_extents: int) -> None:
        """Structure checks; never decompresses. Raises InvalidDelta."""
        validate_header(self.header, max_virtual_size)
        if self._parts is None:
            return  # NOTE: a lazy delta is checked part by part as it runs.
        if len(self._parts) != self.header.part_count:
            raise _invalid(self.header, 'header announces %d parts, %d came'
                           % (self.header.part_count, len(self._parts)))
        check = _PartChecker(self.header, max_part_bytes, max_part_extents)
        for part in self._parts:
            check(part)
        check.finish()

    def verify(self, keep_bytes: int = 0) -> None:
        """Decompress and checksum every held part (before any write).

        Up to ``keep_bytes`` of decoded data is kept, so that the merge
        that follows does not decode those parts a second time. Parts that
        already hold their decoded bytes were checked when they arrived
        (:func:`receive_part`) and are not decoded again.
        """
        kept = 0
        todo = [p for p in self.parts() if p.decoded is None]
        # NOTE: zstd and sha256 release the GIL: parts check in parallel.
        with concurrent.futures.ThreadPoolExecutor(
                max_workers=VERIFY_THREADS) as pool:
            for part, raw in zip(todo, pool.map(
                    lambda p: p.decode(self.header), todo)):
                if kept + len(raw) <= keep_bytes:
                    part.decoded = raw
                    kept += len(raw)

    def iter_extents(self, *, max_part_bytes: int, max_part_extents: int):
        """Yield (offset, length, kind, bytes|None) in offset order."""
        check = _PartChecker(self.header, max_part_bytes, max_part_extents)
        for part in self.parts():
            check(part)
            raw = part.decoded
            part.decoded = None
            raw = memoryview(raw if raw is not None
                             else part.decode(self.header))
            pos = 0
            for offset, length, kind in part.extents:
                if kind == DATA:
                    yield offset, length, kind, raw[pos:pos + length]
                    pos += length
                else:
                    yield offset, length, kind, None
        check.finish()


CONTAINER_MAGIC = b'HSD1'
VERIFY_THREADS = 2
_MAX_META = 4 << 20


def _write_block(f, prefix: bytes, text: str) -> int:
    data = text.encode()
    f.write(prefix + struct.pack('>I', len(data)) + data)
    return len(prefix) + 4 + len(data)


def _read_exact(f, n: int, header) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _invalid(header, 'truncated container')
    return data


def _read_json(f, header):
    (n,) = struct.unpack('>I', _read_exact(f, 4, header))
    if n > _MAX_META:
        raise _invalid(header, 'metadata block of %d bytes' % n)
    try:
        return json.loads(_read_exact(f, n, header))
    except ValueError as e:
        raise _invalid(header, 'unreadable metadata (%s)' % e)


def _invalid(header, reason):
    return exception.InvalidDelta(
        instance=getattr(header, 'instance', '?'),
        sequence=getattr(header, 'sequence', '?'), reason=reason)


def _int(value, name, header, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int) or (
            value < minimum):
        raise _invalid(header, '%s must be an integer >= %d, got %r'
                       % (name, minimum, value))
    return value


def header_to_primitive(h: DeltaHeader) -> dict:
    """The header's JSON object; ``disks`` only when set (a manager
    before RPC 1.5 refuses a key it does not know)."""
    prim = dataclasses.asdict(h)
    if prim['disks'] is None:
        del prim['disks']
    return prim


def header_from_primitive(prim) -> DeltaHeader:
    if not isinstance(prim, dict):
        raise exception.InvalidDelta(instance='?', sequence='?',
                                     reason='header missing or not a dict')
    names = {f.name for f in dataclasses.fields(DeltaHeader)}
    unknown = set(prim) - names
    missing = names - set(prim) - {'created_at', 'format_version', 'full',
                                   'taken_at', 'consistency', 'disks'}
    if unknown or missing:
        raise exception.InvalidDelta(
            instance=prim.get('instance', '?'),
            sequence=prim.get('sequence', '?'),
            reason='header fields unknown %s, missing %s'
            % (sorted(unknown), sorted(missing)))
    return DeltaHeader(**prim)


def validate_header(h: DeltaHeader, max_virtual_size: int) -> None:
    if h.format_version != FORMAT_VERSION:
        raise _invalid(h, 'unsupported format version %r (this service '
                       'reads %d)' % (h.format_version, FORMAT_VERSION))
    if not (isinstance(h.instance, str)
            and uuidutils.is_uuid_like(h.instance)):
        raise exception.InvalidInstance(instance=h.instance)
    if not isinstance(h.project, str) or not h.project or len(
            h.project) > 255 or '/' in h.project:
        raise _invalid(h, 'project must be a non-empty id without "/"')
    _int(h.sequence, 'sequence', h)
    if h.parent is not None and not (isinstance(h.parent, str)
                                     and uuidutils.is_uuid_like(h.parent)):
        raise _invalid(h, 'parent must be a restore point id or null')
    _int(h.virtual_size, 'virtual_size', h, 1)
    if h.virtual_size > max_virtual_size:
        raise _invalid(h, 'virtual size %d exceeds the limit %d'
                       % (h.virtual_size, max_virtual_size))
    _int(h.cluster_size, 'cluster_size', h, 512)
    if h.cluster_size & (h.cluster_size - 1) or h.cluster_size > (2 << 20):
        raise _invalid(h, 'cluster size %d is not a power of two <= 2 MiB'
                       % h.cluster_size)
    _int(h.part_count, 'part_count', h)
    _int(h.changed_bytes, 'changed_bytes', h)
    _int(h.data_bytes, 'data_bytes', h)
    if h.consistency not in CONSISTENCIES:
        raise _invalid(h, 'consistency must be one of %s, got %r'
                       % (', '.join(CONSISTENCIES), h.consistency))
    if not isinstance(h.full, bool):
        raise _invalid(h, 'full must be true or false')
    if not isinstance(h.created_at, (int, float)):
        raise _invalid(h, 'created_at must be a number')
    if h.taken_at is not None and not (
            isinstance(h.taken_at, (int, float))
            and not isinstance(h.taken_at, bool)
            and 0 < h.taken_at < MAX_TIMESTAMP):
        raise _invalid(h, 'taken_at must be null or a time in epoch '
                       'seconds, not %r' % (h.taken_at,))
    if h.disks is not None:
        reason = disk_layout.check(h.disks, h.virtual_size)
        if reason:
            raise _invalid(h, 'bad disk layout: %s' % reason)


def max_payload_bytes(max_part_bytes: int) -> int:
    """The largest compressed payload a part of that limit may carry."""
    return int(max_part_bytes * _MAX_EXPANSION + _MAX_OVERHEAD)


def part_from_primitive(header: DeltaHeader, prim,
                        max_part_bytes: int = 64 << 20) -> DeltaPart:
    if not isinstance(prim, dict):
        raise _invalid(header, 'part is not a dict')
    try:
        payload = codec.b64decode(prim['payload'],
                                  max_payload_bytes(max_part_bytes))
    except codec.CodecError as e:
        raise _invalid(header, 'malformed part %r: payload %s'
                       % (prim.get('index'), e))
    except KeyError as e:
        raise _invalid(header, 'malformed part %r: %s'
                       % (prim.get('index'), e))
    try:
        part = DeltaPart(instance=prim['instance'], sequence=prim['sequence'],
                         index=prim['index'],
                         extents=[tuple(e) for e in prim['extents']],
                         raw_size=prim['raw_size'], sha256=prim['sha256'],
                         payload=payload, compression=prim['compression'])
    except (KeyError, TypeError, ValueError) as e:
        raise _invalid(header, 'malformed part %r: %s'
                       % (prim.get('index'), e))
    return part


def receive_part(instance: str, sequence: int, part: DeltaPart, *,
                 max_part_bytes: int, max_part_extents: int) -> bytes:
    """Check one part on arrival, alone; return its decoded bytes.

    Everything that does not need the header or the other parts: its
    extents (well formed, in order, not overlapping, data bytes matching
    ``raw_size``), the limits, and its payload (decompressed under the
    limit and checksummed). The rest (order across parts, bounds of the
    disk, totals) is checked at commit. Raises InvalidDelta.
    """
    stand_in = DeltaHeader(
        instance=instance, project='?', sequence=sequence, parent=None,
        virtual_size=1 << 63, cluster_size=512, part_count=0,
        changed_bytes=0, data_bytes=0)
    stand_in.part_count = _int(part.index, 'part index', stand_in) + 1
    check = _PartChecker(stand_in, max_part_bytes, max_part_extents)
    check.next_index = part.index
    check(part)
    return part.decode(stand_in)


class _PartChecker:
    """Checks parts in order: indexes, bounds, overlaps, sizes, limits."""

    def __init__(self, header, max_part_bytes, max_part_extents):
        self.h = header
        self.max_bytes = max_part_bytes
        self.max_extents = max_part_extents
        self.next_index = 0
        self.end = 0
        self.changed = 0
        self.data = 0

    def __call__(self, part: DeltaPart) -> None:
        h = self.h

        def bad(reason):
            return _invalid(h, 'part %s: %s' % (part.index, reason))
        if part.instance != h.instance or part.sequence != h.sequence:
            raise bad('belongs to %s/%s' % (part.instance, part.sequence))
        if part.index != self.next_index:
            raise bad('out of order, expected part %d' % self.next_index)
        self.next_index += 1
        if self.next_index > h.part_count:
            raise bad('more parts than the %d announced' % h.part_count)
        _int(part.raw_size, 'raw_size', h)
        if part.raw_size > self.max_bytes:
            raise bad('%d data bytes exceed the part limit %d'
                      % (part.raw_size, self.max_bytes))
        if not isinstance(part.extents, list) or (
                len(part.extents) > self.max_extents):
            raise bad('extents must be a list of at most %d'
                      % self.max_extents)
        data = 0
        for ext in part.extents:
            if not (isinstance(ext, tuple) and len(ext) == 3):
                raise bad('malformed extent %r' % (ext,))
            offset, length, kind = ext
            _int(offset, 'extent offset', h)
            _int(length, 'extent length', h, 1)
            if kind not in KINDS:
                raise bad('unknown extent kind %r' % (kind,))
            if offset < self.end:
                raise bad('extent at %d overlaps or precedes %d'
                          % (offset, self.end))
            if offset + length > h.virtual_size:
                raise bad('extent %d+%d beyond the virtual size %d'
                          % (offset, length, h.virtual_size))
            self.end = offset + length
            self.changed += length
            if kind == DATA:
                data += length
        if data != part.raw_size:
            raise bad('data extents hold %d bytes, raw_size says %d'
                      % (data, part.raw_size))
        self.data += data
        if part.payload is not None:
            if part.compression not in ('zstd', 'none'):
                raise bad('unknown compression %r' % part.compression)
            if len(part.payload) > (part.raw_size * _MAX_EXPANSION
                                    + _MAX_OVERHEAD):
                raise bad('payload of %d bytes for %d data bytes'
                          % (len(part.payload), part.raw_size))
            if not (isinstance(part.sha256, str) and len(part.sha256) == 64):
                raise bad('sha256 must be 64 hex digits')

    def finish(self) -> None:
        h = self.h
        if self.next_index != h.part_count:
            raise _invalid(h, 'header announces %d parts, %d came'
                           % (h.part_count, self.next_index))
        if self.changed != h.changed_bytes or self.data != h.data_bytes:
            raise _invalid(h, 'parts change %d bytes (%d data), header says '
                           '%d (%d)' % (self.changed, self.data,
                                        h.changed_bytes, h.data_bytes))


def new_restore_point_id() -> str:
    return str(uuid.uuid4())
