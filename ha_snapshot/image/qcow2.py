"""A strict, read-only reader of qcow2 metadata: the ranges a file holds.

What it gives: the extents a qcow2 file holds itself (depth 0, the same
set ``qemu-img map`` of the file opened with a null backing reports, see
:func:`ha_snapshot.image.ranges.own_extents`), its virtual and cluster
size and the backing file name written in its header, without starting a
process. The agent reads its own frozen overlays this way every cycle.

Why it is safe on any file, hostile ones included:

- It opens the one file it is given, read-only, and reads it with
  ``os.pread``; a name found inside the file (backing file, external data
  file) is reported or refused, never opened.
- Every offset and size read from the file is checked before use: the
  header fields against their limits, the L1 table and each L2 table
  against the file size and cluster alignment, every L2 entry's reserved
  bits, and how much is read at all (the L1 entries needed for the virtual
  size, which the caller bounds, and one L2 table, one cluster, at a time).
- It handles exactly the plain case: version 2 or 3, no encryption, no
  incompatible feature bit (dirty, corrupt, external data file,
  compression type, extended L2 entries), no compressed cluster, every
  data cluster inside the file and in no hole of it. Anything else raises
  :class:`~ha_snapshot.exception.Qcow2Unsupported`, and the caller takes
  the ``qemu-img`` path (which inspects, checks and maps under prlimit, and
  refuses what it must), so nothing it does not understand is guessed.
"""

import dataclasses
import os
import stat
import struct

from ha_snapshot import exception

MAGIC = b'QFI\xfb'
# NOTE: the limits QEMU itself enforces when it opens a qcow2 file.
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_L1_ENTRIES = (32 << 20) // 8
MAX_BACKING_NAME = 1023

EXT_END = 0
EXT_BACKING_FORMAT = 0xe2792aca
EXT_DATA_FILE = 0x44415441
EXT_CRYPTO = 0x0537be77

L1_OFFSET_MASK = 0x00fffffffffffe00
L1_RESERVED = 0x7f000000000001ff
L2_COPIED = 1 << 63
L2_COMPRESSED = 1 << 62
L2_OFFSET_MASK = 0x00fffffffffffe00
L2_ZERO = 1
L2_RESERVED = 0x3f000000000001fe

DATA = 'data'
ZERO = 'zero'


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the reader found. ``extents`` are ``(offset, length, kind,
    host_offset)`` tuples in guest bytes, sorted and merged as
    :func:`ha_snapshot.image.ranges.own_extents` merges qemu-img map's
    entries; ``host_offset`` is None for zero extents."""
    version: int
    cluster_size: int
    virtual_size: int
    backing_file: str | None
    backing_format: str | None
    file_size: int
    extents: tuple


def _unsupported(path, reason):
    raise exception.Qcow2Unsupported(path=path, reason=reason)


def _pread(fd, path, length, offset, what):
    data = os.pread(fd, length, offset)
    if len(data) != length:
        _unsupported(path, '%s: %d bytes at %d, the file ends before'
                     % (what, length, offset))
    return data


def _next_hole(fd, pos):
    try:
        return os.lseek(fd, pos, os.SEEK_HOLE)
    except OSError:
        return pos  # NOTE: unknown: treated as a hole (qemu-img decides)


def read_layout(path: str, *, max_virtual_size: int) -> Layout:
    """Parse ``path`` and return its :class:`Layout`.

    :raises Qcow2Unsupported: anything outside the plain case (see the
        module's docstring), including a malformed or truncated file.
    :raises ImageNotFound: ``path`` is not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
                     | os.O_NONBLOCK)
    except OSError:
        raise exception.ImageNotFound(path=path)
    try:
        st = os.fstat(fd)
        # NOTE: fstat of what was opened: a FIFO or device swapped in under
        # the name is never read.
        if not stat.S_ISREG(st.st_mode):
            raise exception.ImageNotFound(path=path)
        return _read(fd, path, st, max_virtual_size)
    finally:
        os.close(fd)


def _read(fd, path, st, max_virtual_size) -> Layout:
    size = st.st_size
    head = os.pread(fd, 112, 0)
    if len(head) < 72 or head[:4] != MAGIC:
        _unsupported(path, 'not a qcow2 header')
    (version, backing_off, backing_len, cluster_bits, vsize, crypt,
     l1_size, l1_off) = struct.unpack('>IQIIQIIQ', head[4:48])
    if version not in (2, 3):
        _unsupported(path, 'qcow2 version %d' % version)
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        _unsupported(path, 'cluster bits %d' % cluster_bits)
    cs = 1 << cluster_bits
    if crypt:
        _unsupported(path, 'encrypted')
    if vsize <= 0 or vsize > max_virtual_size:
        _unsupported(path, 'virtual size %d outside (0, %d]'
                     % (vsize, max_virtual_size))
    header_len = 72
    if version == 3:
        if len(head) < 104:
            _unsupported(path, 'truncated version 3 header')
        incompat, _compat, _autoclear, refcount_order, header_len = (
            struct.unpack('>QQQII', head[72:104]))
        if incompat:
            _unsupported(path, 'incompatible features %#x' % incompat)
        if refcount_order > 6:
            _unsupported(path, 'refcount order %d' % refcount_order)
        if header_len < 104 or header_len % 8 or header_len > cs:
            _unsupported(path, 'header length %d' % header_len)

    # Header extensions: within the first cluster, as QEMU reads them.
    backing_format = None
    first = _pread(fd, path, min(cs, size), 0, 'first cluster')
    pos = header_len
    while True:
        if pos + 8 > len(first):
            _unsupported(path, 'header extensions run past the first '
                         'cluster')
        ext_type, ext_len = struct.unpack('>II', first[pos:pos + 8])
        if ext_type == EXT_END:
            break
        data_end = pos + 8 + ext_len
        if data_end > len(first):
            _unsupported(path, 'header extension %#x runs past the first '
                         'cluster' % ext_type)
        if ext_type == EXT_DATA_FILE:
            _unsupported(path, 'external data file')
        if ext_type == EXT_CRYPTO:
            _unsupported(path, 'encryption header')
        if ext_type == EXT_BACKING_FORMAT:
            try:
                backing_format = first[pos + 8:data_end].decode('ascii')
            except UnicodeDecodeError:
                _unsupported(path, 'backing format name is not ASCII')
        pos = (data_end + 7) & ~7

    backing = None
    if backing_off:
        if (backing_len == 0 or backing_len > MAX_BACKING_NAME
                or backing_off + backing_len > len(first)):
            _unsupported(path, 'backing file name at %d+%d'
                         % (backing_off, backing_len))
        try:
            backing = first[backing_off:backing_off + backing_len].decode(
                'utf-8')
        except UnicodeDecodeError:
            _unsupported(path, 'backing file name is not UTF-8')
        if '\0' in backing:
            _unsupported(path, 'backing file name holds a NUL byte')

    # L1: only the entries the virtual size needs are used (QEMU ignores
    # the rest), but the whole table it declares must lie in the file.
    l2_entries = cs // 8
    per_l1 = l2_entries * cs
    needed = -(-vsize // per_l1)
    if l1_size < needed or l1_size > MAX_L1_ENTRIES:
        _unsupported(path, 'L1 size %d (%d needed)' % (l1_size, needed))
    if l1_off % cs or l1_off < cs or l1_off + l1_size * 8 > size:
        _unsupported(path, 'L1 table at %d+%d outside the file or '
                     'unaligned' % (l1_off, l1_size * 8))
    l1 = struct.unpack('>%dQ' % needed,
                       _pread(fd, path, needed * 8, l1_off, 'L1 table'))

    extents = []

    def add(off, length, kind, host):
        if extents:
            p_off, p_len, p_kind, p_host = extents[-1]
            if (p_kind == kind and p_off + p_len == off
                    and (kind == ZERO or p_host + p_len == host)):
                extents[-1] = (p_off, p_len + length, kind, p_host)
                return
        extents.append((off, length, kind, host))

    l2_fmt = '>%dQ' % l2_entries
    for i, l1e in enumerate(l1):
        if not l1e:
            continue
        if l1e & L1_RESERVED:
            _unsupported(path, 'L1 entry %d has reserved bits set' % i)
        l2_off = l1e & L1_OFFSET_MASK
        if not l2_off:
            continue
        if l2_off % cs or l2_off < cs or l2_off + cs > size:
            _unsupported(path, 'L2 table %d at %d outside the file or '
                         'unaligned' % (i, l2_off))
        l2 = struct.unpack(l2_fmt, _pread(fd, path, cs, l2_off, 'L2 table'))
        base = i * per_l1
        for j, l2e in enumerate(l2):
            if not l2e:
                continue
            guest = base + j * cs
            if guest >= vsize:
                break
            if l2e & L2_COMPRESSED:
                _unsupported(path, 'compressed cluster at %d' % guest)
            if l2e & L2_RESERVED:
                _unsupported(path, 'L2 entry for %d has reserved bits set'
                             % guest)
            host = l2e & L2_OFFSET_MASK
            length = min(cs, vsize - guest)
            if l2e & L2_ZERO:
                if version < 3:
                    _unsupported(path, 'zero flag in a version 2 image')
                if host % cs:
                    _unsupported(path, 'unaligned cluster for %d' % guest)
                add(guest, length, ZERO, None)
                continue
            if not host:
                continue  # NOTE: only the COPIED bit: unallocated
            if host % cs or host < cs or host + length > size:
                _unsupported(path, 'data cluster for %d at %d outside the '
                             'file or unaligned' % (guest, host))
            add(guest, length, DATA, host)
    # NOTE: QEMU asks the filesystem where the file's holes are when it
    # judges the file "metadata preallocated" (a refcount heuristic), and
    # then reports data clusters lying in a hole as zeros. Where no data
    # cluster touches a hole (always, for clusters QEMU wrote), both
    # answers are the same; otherwise leave the file to qemu-img map.
    for off, length, kind, host in extents:
        if kind == DATA and _next_hole(fd, host) < host + length:
            _unsupported(path, 'data at %d lies in a hole of the file'
                         % off)
    return Layout(version=version, cluster_size=cs, virtual_size=vsize,
                  backing_file=backing, backing_format=backing_format,
                  file_size=size, extents=tuple(extents))
