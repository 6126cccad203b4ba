"""What the store keeps in the driver: chunks and restore-point manifests.

Layout (keys)::

    chunks/<scope>/<sha256[:3]>/<sha256>          one chunk
    instances/<uuid>/restore-points/<number:012d>  one manifest

A chunk is named by the sha256 of its uncompressed content and stored with
a 5-byte header (magic ``HSC`` + version + codec). A manifest is the zstd
compressed JSON of a :class:`RestorePoint`: every restore point maps every
non-zero chunk index of the disk to a chunk, so it is a whole image on its
own and exporting it never walks a chain.
"""

import dataclasses
import hashlib
import json

import zstandard

from ha_snapshot import codec as codec_mod
from ha_snapshot import disk_layout
from ha_snapshot import exception

MANIFEST_VERSION = 1
_CHUNK_MAGIC = b'HSC\x01'
_CODEC_NONE = 0
_CODEC_ZSTD = 1


def chunk_key(scope: str, sha: str) -> str:
    return 'chunks/%s/%s/%s' % (scope, sha[:3], sha)


def manifest_prefix(instance: str) -> str:
    return 'instances/%s/restore-points/' % instance


def manifest_key(instance: str, number: int) -> str:
    return '%s%012d' % (manifest_prefix(instance), number)


def encode_chunk(data: bytes, compress: bool, cctx=None) -> bytes:
    """The stored form of a chunk: compressed only if that pays
    (:func:`ha_snapshot.codec.compress_if_it_pays`)."""
    if compress:
        packed = codec_mod.compress_if_it_pays(
            data, cctx or zstandard.ZstdCompressor(level=1))
        if packed is not None:
            return _CHUNK_MAGIC + bytes([_CODEC_ZSTD]) + packed
    return _CHUNK_MAGIC + bytes([_CODEC_NONE]) + data


MAX_CHUNK = 64 << 20
MAX_MANIFEST = 1 << 30


def decode_chunk(key: str, blob: bytes, sha: str,
                 length: int | None) -> bytes:
    """Decode and check a stored chunk; raise CorruptObject if it lies.

    ``length`` None (a chunk met outside any manifest) checks only that it
    is at most MAX_CHUNK bytes.
    """
    limit = MAX_CHUNK if length is None else length
    if len(blob) < 5 or blob[:4] != _CHUNK_MAGIC:
        raise exception.CorruptObject(key=key, reason='bad chunk header')
    codec, body = blob[4], memoryview(blob)[5:]
    if codec == _CODEC_NONE:
        data = bytes(body)
    elif codec == _CODEC_ZSTD:
        try:
            data = codec_mod.decompress(body, limit)
        except codec_mod.CodecError as e:
            raise exception.CorruptObject(key=key, reason=str(e))
    else:
        raise exception.CorruptObject(key=key, reason='unknown codec %d'
                                      % codec)
    if len(data) > limit or (length is not None and len(data) != length):
        raise exception.CorruptObject(
            key=key, reason='holds %s bytes, expected %d'
            % ('more' if len(data) > limit else len(data), limit))
    if hashlib.sha256(data).hexdigest() != sha:
        raise exception.CorruptObject(key=key, reason='content does not '
                                      'match its sha256 name')
    return data


@dataclasses.dataclass
class RestorePoint:
    id: str
    instance: str
    project: str
    scope: str
    number: int
    parent: str | None
    created_at: float
    virtual_size: int
    chunk_size: int
    chunks: dict              # chunk index -> sha256 (non-zero chunks only)
    delta_sequence: int
    changed_bytes: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    source: str | None = None
    format_version: int = MANIFEST_VERSION
    consistency: str = 'crash'
    """'filesystem': taken inside a guest file system freeze (see
    ha_snapshot.statuses.Consistency). Left out of a manifest when
    'crash', as manifests were written before it existed."""
    disks: list | None = None
    """The disks the point covers (ha_snapshot/disk_layout.py): target,
    role, offset and size of each in the concatenated image. None (left
    out of the manifest, as manifests were written before it existed): the
    root disk alone."""
    extra: dict = dataclasses.field(default_factory=dict)
    """Keys of a manifest this release does not know (written by a newer
    replica during a rolling upgrade): kept as they were, written back by
    :meth:`encode`, never interpreted."""

    @property
    def key(self) -> str:
        return manifest_key(self.instance, self.number)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size,
                   self.virtual_size - index * self.chunk_size)

    def summary(self) -> dict:
        """Everything but the chunk map (listing, CLI)."""
        d = dataclasses.asdict(self)
        d.pop('chunks')
        d.pop('extra')
        d['stored_chunks'] = len(self.chunks)
        return d

    def encode(self) -> bytes:
        d = dict(self.extra)
        d.update(dataclasses.asdict(self))
        del d['extra']
        if d['consistency'] == 'crash':
            del d['consistency']
        if d['disks'] is None:
            del d['disks']
        d['chunks'] = {str(k): v for k, v in sorted(self.chunks.items())}
        return encode_json(d)


def encode_json(d: dict) -> bytes:
    """A store object that is a JSON document (a restore point's or a
    memory state's manifest): compact JSON, zstd-compressed."""
    return zstandard.ZstdCompressor(level=3).compress(
        json.dumps(d, separators=(',', ':')).encode())


def decode_json(blob: bytes, limit: int, version: int) -> dict:
    """The document of :func:`encode_json` (at most ``limit`` bytes
    decompressed), whose ``format_version`` must be ``version``; a
    ValueError (codec errors are ValueErrors) says what is wrong."""
    d = json.loads(codec_mod.decompress(blob, limit))
    if not isinstance(d, dict):
        raise ValueError('not a JSON object')
    if d.get('format_version') != version:
        raise ValueError('unsupported format version %r'
                         % d.get('format_version'))
    return d


_FIELDS = frozenset(f.name for f in dataclasses.fields(RestorePoint)) - {
    'extra'}


def decode_manifest(key: str, blob: bytes) -> RestorePoint:
    try:
        d = decode_json(blob, MAX_MANIFEST, MANIFEST_VERSION)
        d['chunks'] = {int(k): v for k, v in d['chunks'].items()}
        # NOTE: a newer replica may add optional keys (rolling upgrade);
        # a key this release needs and does not find still fails below.
        d['extra'] = {k: d.pop(k) for k in list(d) if k not in _FIELDS}
        rp = RestorePoint(**d)
    except (ValueError, TypeError, KeyError,
            AttributeError) as e:
        raise exception.CorruptObject(key=key, reason='unreadable manifest '
                                      '(%s)' % e)
    if rp.key != key:
        raise exception.CorruptObject(key=key, reason='manifest names '
                                      'itself %s' % rp.key)
    if rp.disks is not None:
        reason = disk_layout.check(rp.disks, rp.virtual_size)
        if reason:
            raise exception.CorruptObject(key=key, reason='bad disk '
                                          'layout: %s' % reason)
    nchunks = -(-rp.virtual_size // rp.chunk_size)
    for index, sha in rp.chunks.items():
        if not (0 <= index < nchunks and isinstance(sha, str)
                and len(sha) == 64):
            raise exception.CorruptObject(key=key, reason='bad chunk entry '
                                          '%r: %r' % (index, sha))
    return rp
