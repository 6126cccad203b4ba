"""Bounded zstandard decompression for untrusted or possibly damaged data.

One frame, with its content size declared, no larger than the caller's
limit, fully consumed with nothing after it: anything else is an error, and
no more than ``limit`` bytes are ever allocated.
"""

import zstandard


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
