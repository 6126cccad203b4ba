"""A VM's memory state as the agent keeps and ships it.

QEMU writes the state (its migration stream) into a pipe; the agent cuts
it into content-defined chunks as it arrives (:class:`Chunker`), so that
the store deduplicates a state against the ones before it although pages
change in between, and writes each chunk zstd-compressed into a local
spool file (:class:`SpoolWriter`): the whole RAM is never held in memory.

Chunk boundaries: a zero or a normal RAM page in the stream starts with an
8-byte big-endian header, the page's guest address with the flags in its
low bits (``RAM_SAVE_FLAG_ZERO`` 0x02 or ``_PAGE`` 0x08, with ``_CONTINUE``
0x20). A chunk ends before a header whose address is a multiple of
BOUNDARY_ALIGN (the pattern :data:`BOUNDARY`); page data matching it by
chance is a boundary too, which is harmless: boundaries only have to
depend on the content, never on offsets. Chunks are at least MIN_CHUNK and
at most MAX_CHUNK bytes.

:func:`config_of` reduces a QEMU command line to what a resume depends on
(machine, memory, CPUs, devices, firmware); :func:`check_config` compares
two such configurations.

May import the standard library, zstandard and ha_snapshot.exception.
"""

import dataclasses
import hashlib
import json
import os
import re
import struct

import zstandard

from ha_snapshot import exception

MIN_CHUNK = 64 << 10
MAX_CHUNK = 2 << 20
# NOTE: addresses aligned to 256 KiB: the low 18 bits are the flags alone.
BOUNDARY_ALIGN = 256 << 10
# NOTE: the whole header: guest addresses below 1 TiB (three zero bytes),
# two free bytes, the low 18 bits zero but for the flags.
BOUNDARY = re.compile(
    b'\\x00\\x00\\x00..['
    + b''.join(re.escape(bytes([b])) for b in range(0, 256, 4))
    + b']\\x00[\\x22\\x28]', re.DOTALL)
_HEADER_BACK = 0
_PATTERN = 8
_FRAME = struct.Struct('>I')
FORMAT_VERSION = 1


class Chunker:
    """Feed bytes, get content-defined chunks (``on_chunk(bytes)``)."""

    def __init__(self, on_chunk, min_chunk: int = MIN_CHUNK,
                 max_chunk: int = MAX_CHUNK):
        self.on_chunk = on_chunk
        self.min = min_chunk
        self.max = max_chunk
        self._buf = bytearray()
        self._searched = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            cut = self._find_cut()
            if cut is None:
                return
            chunk = bytes(self._buf[:cut])
            del self._buf[:cut]
            self._searched = 0
            self.on_chunk(chunk)

    def _find_cut(self) -> int | None:
        buf = self._buf
        start = max(self.min + _HEADER_BACK, self._searched)
        match = BOUNDARY.search(buf, start, min(len(buf), self.max
                                                + _PATTERN))
        if match is not None:
            return match.start() - _HEADER_BACK
        if len(buf) >= self.max + _PATTERN:
            return self.max
        # NOTE: a pattern may straddle what came and what comes next.
        self._searched = max(start, len(buf) - _PATTERN)
        return None

    def close(self) -> None:
        if self._buf:
            chunk = bytes(self._buf)
            self._buf.clear()
            self.on_chunk(chunk)


@dataclasses.dataclass
class ChunkRef:
    sha256: str
    length: int
    offset: int
    """Where its frame starts in the spool file."""
    stored: int
    """Bytes of its (compressed) frame, without the frame header."""


@dataclasses.dataclass
class SpoolIndex:
    """What a spool file holds (saved beside it as JSON)."""
    chunks: list
    size: int
    config: dict
    saved_at: float | None = None
    save_seconds: float | None = None
    pause_seconds: float | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d['chunks'] = [[c.sha256, c.length, c.offset, c.stored]
                       for c in self.chunks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'SpoolIndex':
        d = dict(d)
        if d.get('format_version') != FORMAT_VERSION:
            raise ValueError('unsupported memory spool format %r'
                             % d.get('format_version'))
        d['chunks'] = [ChunkRef(*c) for c in d['chunks']]
        return cls(**d)

    def manifest(self) -> dict:
        """What the manager stores (chunk order and sizes, the config)."""
        return {'chunks': [[c.sha256, c.length] for c in self.chunks],
                'size': self.size, 'config': self.config,
                'saved_at': self.saved_at,
                'format_version': self.format_version}


def index_path(spool: str) -> str:
    return spool + '.json'


class SpoolWriter:
    """Chunks a stream into a spool file of zstd frames; ``write`` is the
    sink QEMU's stream goes into. :meth:`finish` writes the index."""

    def __init__(self, path: str, level: int = 1):
        self.path = path
        self._file = open(path, 'wb')
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._chunks = []
        self._offset = 0
        self.size = 0
        self._chunker = Chunker(self._add)

    def _add(self, chunk: bytes) -> None:
        frame = self._cctx.compress(chunk)
        self._file.write(_FRAME.pack(len(frame)))
        self._file.write(frame)
        self._chunks.append(ChunkRef(hashlib.sha256(chunk).hexdigest(),
                                     len(chunk), self._offset, len(frame)))
        self._offset += _FRAME.size + len(frame)
        self.size += len(chunk)

    def write(self, data: bytes) -> None:
        self._chunker.feed(data)

    def finish(self, config: dict, **figures) -> SpoolIndex:
        self._chunker.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        index = SpoolIndex(chunks=self._chunks, size=self.size,
                           config=config, **figures)
        tmp = index_path(self.path) + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(index.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, index_path(self.path))
        return index

    def abort(self) -> None:
        self._file.close()
        remove_spool(self.path)


def remove_spool(path: str) -> None:
    for p in (path, index_path(path), index_path(path) + '.tmp'):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def load_index(spool: str) -> SpoolIndex:
    try:
        with open(index_path(spool)) as f:
            return SpoolIndex.from_dict(json.load(f))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise exception.MemorySpoolError(path=spool, reason='unreadable (%s)'
                                         % e)


def read_frame(spool_file, ref: ChunkRef) -> bytes:
    """The compressed frame of chunk ``ref`` (an open spool file)."""
    spool_file.seek(ref.offset)
    (n,) = _FRAME.unpack(spool_file.read(_FRAME.size))
    if n != ref.stored:
        raise exception.MemorySpoolError(
            path=spool_file.name, reason='the frame at %d holds %d bytes, '
            'the index says %d' % (ref.offset, n, ref.stored))
    return spool_file.read(n)


def unpack_chunk(frame: bytes, sha: str, length: int) -> bytes:
    """A chunk from its zstd frame, checked against its sha256."""
    try:
        data = zstandard.ZstdDecompressor().decompress(
            frame, max_output_size=length)
    except zstandard.ZstdError as e:
        raise exception.MemorySpoolError(
            path='?', reason='chunk %s: not a zstd frame (%s)' % (sha, e))
    if len(data) != length or hashlib.sha256(data).hexdigest() != sha:
        raise exception.MemorySpoolError(
            path='?', reason='chunk %s does not match its sha256 or length'
            % sha)
    return data


def iter_spool(spool: str):
    """The state's bytes, chunk by chunk, each checked."""
    index = load_index(spool)
    with open(spool, 'rb') as f:
        for ref in index.chunks:
            yield unpack_chunk(read_frame(f, ref), ref.sha256, ref.length)


# --- configuration ----------------------------------------------------------

# NOTE: options that change the guest's hardware (RAM blocks, PCI layout,
# firmware ROMs). Paths (disks, sockets, logs) may differ: they are not
# part of the migration stream. Only presence counts for the boot files:
# the kernel's bytes are in the saved RAM, its option ROM must exist.
_VALUED = ('-machine', '-accel', '-m', '-smp', '-cpu', '-bios')
_PRESENCE = ('-kernel', '-initrd')
# NOTE: device properties naming a host-side backend (a block node, a
# chardev): their names are not in the guest's state.
_BACKEND = re.compile(r'(?<=[,=])(drive|chardev)=[^,]*')


def _device(value: str) -> str:
    return _BACKEND.sub(lambda m: m.group(1) + '=*', value)


def config_of(argv: list) -> dict:
    """What a resume from memory depends on, out of a QEMU argv."""
    config = {'devices': []}
    args = list(argv[1:])
    for i, arg in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else ''
        if arg == '-device':
            config['devices'].append(_device(value))
        elif arg in _VALUED:
            config[arg.lstrip('-')] = value
        elif arg in _PRESENCE:
            config[arg.lstrip('-')] = True
    return config


def proc_config(pid: int) -> dict:
    """:func:`config_of` the running process ``pid``."""
    with open('/proc/%d/cmdline' % pid, 'rb') as f:
        argv = [a.decode('utf-8', 'replace')
                for a in f.read().split(b'\0') if a]
    return config_of(argv)


def check_config(vm: str, saved: dict, new: dict) -> None:
    """Raise MemoryStateMismatch naming the first difference."""
    for key in sorted(set(saved) | set(new)):
        if saved.get(key) != new.get(key):
            raise exception.MemoryStateMismatch(
                vm=vm, reason='%s was %r, now %r' % (key, saved.get(key),
                                                     new.get(key)))
