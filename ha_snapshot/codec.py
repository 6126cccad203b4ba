"""Codecs for untrusted or possibly damaged data: zstandard and base64.

zstandard: one frame, with its content size declared, no larger than the
caller's limit, fully consumed with nothing after it: anything else is an
error, and no more than ``limit`` bytes are ever allocated.

base64: delta parts cross oslo.messaging (JSON) as base64 text. The
standard library's codec runs at ~300 MB/s here, which made decoding the
manager's largest cost per part; pybase64 (SIMD) does the same, strictly
validated, at over 1.5 GB/s. The standard library stays the fallback.
"""

import binascii

import zstandard

try:
    import pybase64
except ImportError:  # pragma: no cover - pybase64 is in requirements.txt
    pybase64 = None


class CodecError(ValueError):
    pass


def decompress(blob, limit: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(blob)
    except zstandard.ZstdError as e:
        raise CodecError('not a zstd frame (%s)' % e)
    size = params.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN or size == (
            zstandard.CONTENTSIZE_ERROR):
        raise CodecError('frame does not declare its size')
    if size > limit:
        raise CodecError('decompresses to more than %d bytes' % limit)
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(blob)
    except zstandard.ZstdError as e:
        raise CodecError('corrupt frame (%s)' % e)
    if not dobj.eof:
        raise CodecError('truncated frame')
    if dobj.unused_data:
        raise CodecError('%d bytes of trailing data' % len(dobj.unused_data))
    if len(out) != size:
        raise CodecError('frame declares %d bytes, holds %d' % (size,
                                                                len(out)))
    return out


# NOTE: compressing a sample first spares the whole compression of data
# that does not shrink (encrypted or already compressed guest data).
_PROBE = 64 * 1024


def compress_if_it_pays(data, cctx) -> bytes | None:
    """``data`` compressed by ``cctx``, or None when that saves too little
    to be worth decompressing (less than 1/32 of it, or a 64 KiB sample
    shrinks by less than 1/16)."""
    if len(data) > _PROBE and len(cctx.compress(data[:_PROBE])) >= (
            _PROBE - _PROBE // 16):
        return None
    packed = cctx.compress(data)
    if len(packed) < len(data) - len(data) // 32:
        return packed
    return None


def b64encode(data) -> str:
    """Base64 text (ASCII ``str``) of ``data``."""
    if pybase64 is not None:
        return pybase64.b64encode(data).decode('ascii')
    return binascii.b2a_base64(data, newline=False).decode('ascii')


def b64decode(text, limit: int) -> bytes:
    """Strictly validated base64 (``str`` or bytes), at most ``limit``
    decoded bytes; raise CodecError on anything else."""
    if not isinstance(text, (str, bytes, bytearray, memoryview)):
        raise CodecError('not base64: %s' % type(text).__name__)
    if len(text) > (limit + 2) // 3 * 4:
        raise CodecError('base64 text of %d characters decodes to more than '
                         '%d bytes' % (len(text), limit))
    try:
        if pybase64 is not None:
            # NOTE: it reads an ASCII str as is (encoding it first cost
            # more than the decoding) and refuses any other.
            return pybase64.b64decode(text, validate=True)
        if isinstance(text, str):
            text = text.encode('ascii')
        return binascii.a2b_base64(text, strict_mode=True)
    except UnicodeEncodeError:
        raise CodecError('not base64: non-ASCII characters')
    except (binascii.Error, ValueError) as e:
        raise CodecError('not base64 (%s)' % e)
