"""Decide whether an image file may be opened at all.

Two independent looks, both before qemu-img ever opens the file for data:
oslo.utils' format inspector (pure Python, reads the header) and
``qemu-img info`` under prlimit with the format forced. A file passes only if
both agree on the format and nothing in it reaches outside the file, and a
qcow2 file also passes ``qemu-img check`` (opened with a null backing).

That full inspection is for every file that comes from outside: images
imported, restore points, and any overlay the agent did not make itself.
The agent's own frozen overlays, which it created (an empty qcow2 naming
the image below) and only the local QEMU wrote since, are instead read by
the strict pure-Python reader of :mod:`ha_snapshot.image.qcow2`
(:func:`inspect_own_overlay`): it checks every table offset against the
file, refuses what it does not handle, opens nothing but the file, and
costs no process; anything unusual falls back to the full inspection.
"""

import dataclasses
import os
import re
import stat
import struct

from oslo_utils.imageutils import format_inspector

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.image import qcow2
from ha_snapshot.image import qemu

LOG = logging.getLogger(__name__)

FORMATS = ('raw', 'qcow2')

# NOTE: anything qemu would read as a protocol prefix ("json:", "http:",
# "nbd:", "file:") before the first slash.
_PROTOCOL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*:')


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    path: str
    format: str
    virtual_size: int
    cluster_size: int
    backing_file: str | None
    # NOTE: set by inspect_own_overlay: the layout its reader found, so
    # that the extents are not read twice.
    layout: object = dataclasses.field(default=None, compare=False,
                                       repr=False)


def _refuse(path, reason):
    raise exception.UnsafeImage(path=path, reason=reason)


def inspect_own_overlay(path: str, *, max_virtual_size: int,
                        expected_backing: str | None,
                        limits: qemu.Limits | None = None) -> ImageInfo:
    """Inspect an overlay the agent made itself, cheaply when possible.

    The qcow2 reader validates the structure it reads (header, L1 and L2
    tables, each against the file size; no encryption, external data file,
    incompatible feature or compressed cluster) and the backing name must
    be the expected image's path. qemu-img never opens the file on this
    path, so ``qemu-img info``/``check`` (which guard qemu-img itself and
    refcount consistency, which reading ranges does not depend on) are not
    needed. Whatever the reader does not accept goes through
    :func:`inspect`, which refuses or accepts it as for any other file.
    """
    try:
        layout = qcow2.read_layout(path, max_virtual_size=max_virtual_size)
    except exception.Qcow2Unsupported as e:
        LOG.debug('%s; full inspection', e)
        layout = None
    if layout is not None and _own_backing_ok(path, layout,
                                              expected_backing):
        return ImageInfo(path=os.path.abspath(path), format='qcow2',
                         virtual_size=layout.virtual_size,
                         cluster_size=layout.cluster_size,
                         backing_file=layout.backing_file, layout=layout)
    return inspect(path, 'qcow2', max_virtual_size=max_virtual_size,
                   allow_backing=expected_backing is not None,
                   expected_backing=expected_backing, limits=limits)


def _own_backing_ok(path, layout, expected_backing) -> bool:
    if layout.backing_file is None:
        return expected_backing is None
    if expected_backing is None or _PROTOCOL.match(layout.backing_file):
        return False
    resolved = os.path.realpath(os.path.join(os.path.dirname(
        os.path.abspath(path)), layout.backing_file))
    return resolved == os.path.realpath(expected_backing)


def inspect(path: str, expected_format: str | None, *,
            max_virtual_size: int,
            allow_backing: bool = False, expected_backing: str | None = None,
            limits: qemu.Limits | None = None) -> ImageInfo:
    """Inspect ``path`` and return its facts, or raise UnsafeImage.

    :param expected_format: ``raw`` or ``qcow2``; None accepts whichever
        of the two the file is.
    :param allow_backing: the file is an overlay: a backing file name is
        accepted (it will never be opened: overlays are read with a null
        backing) provided it is a plain local path, and ``expected_backing``
        when given.
    """
    if expected_format is not None and expected_format not in FORMATS:
        raise exception.ImageError(
            path=path, reason='unsupported format %r, expected one of %s'
            % (expected_format, ', '.join(FORMATS)))
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except OSError:
        raise exception.ImageNotFound(path=path)
    if not stat.S_ISREG(st.st_mode):
        raise exception.ImageNotFound(path=path)
    if st.st_size == 0:
        _refuse(path, 'the file is empty')

    try:
        inspector = format_inspector.detect_file_format(path)
    except format_inspector.ImageFormatError as e:
        _refuse(path, 'unreadable image header (%s)' % e)
    detected = inspector.NAME if inspector is not None else 'raw'
    if expected_format is None and detected in FORMATS:
        expected_format = detected
    if detected != expected_format:
        _refuse(path, 'it is %s, expected %s' % (
            detected, expected_format or ' or '.join(FORMATS)))
    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as e:
        failures = dict(getattr(e, 'failures', {}) or {})
        if allow_backing:
            failures.pop('backing_file', None)
        if failures:
            _refuse(path, '; '.join('%s: %s' % (k, v)
                                    for k, v in sorted(failures.items())))
    if expected_format == 'qcow2':
        # NOTE: the inspector does not look at crypt_method (header offset
        # 32); qemu-img would then fail or ask for a key. Refuse up front.
        with open(path, 'rb') as f:
            header = f.read(36)
        if len(header) < 36 or struct.unpack('>I', header[32:36])[0]:
            _refuse(path, 'encrypted images are not supported')
    if expected_format == 'raw':
        # NOTE: the raw inspector only counts the bytes it read.
        inspector_size = st.st_size
    else:
        inspector_size = inspector.virtual_size
    if inspector_size > max_virtual_size:
        _refuse(path, 'virtual size %d exceeds the limit %d '
                '([image] max_virtual_size)'
                % (inspector_size, max_virtual_size))

    info = qemu.info(path, expected_format, limits=limits)
    if info.get('format') != expected_format:
        _refuse(path, 'qemu-img sees %s, expected %s'
                % (info.get('format'), expected_format))
    vsize = info.get('virtual-size')
    if not isinstance(vsize, int) or vsize <= 0:
        _refuse(path, 'no valid virtual size')
    if vsize > max_virtual_size:
        _refuse(path, 'virtual size %d exceeds the limit %d '
                '([image] max_virtual_size)' % (vsize, max_virtual_size))
    if vsize != inspector_size:
        _refuse(path, 'virtual size disagrees between inspectors '
                '(%d vs %d)' % (vsize, inspector_size))
    if info.get('encrypted'):
        _refuse(path, 'encrypted images are not supported')
    specific = (info.get('format-specific') or {}).get('data') or {}
    if specific.get('encrypt'):
        _refuse(path, 'encrypted images are not supported')
    if specific.get('data-file') or specific.get('data-file-raw'):
        _refuse(path, 'it has an external data file')
    if specific.get('corrupt'):
        _refuse(path, 'qcow2 corrupt flag is set; run qemu-img check')

    backing = info.get('backing-filename')
    if backing is not None:
        if not allow_backing:
            _refuse(path, 'it has a backing file (%r); a whole image is '
                    'expected' % backing)
        if _PROTOCOL.match(backing):
            _refuse(path, 'backing file %r is not a plain local path'
                    % backing)
        if expected_backing is not None:
            resolved = os.path.realpath(
                os.path.join(os.path.dirname(path), backing))
            if resolved != os.path.realpath(expected_backing):
                _refuse(path, 'backing file %r is not the expected %s'
                        % (backing, expected_backing))
    cluster = info.get('cluster-size') or 0
    if expected_format == 'qcow2' and not (
            isinstance(cluster, int) and 512 <= cluster <= (2 << 20)):
        _refuse(path, 'unexpected cluster size %r' % cluster)
    if expected_format == 'qcow2':
        report = qemu.check(path, limits=limits)
        if report.get('corruptions') or report.get('check-errors'):
            _refuse(path, 'qemu-img check finds %s corruptions and %s '
                    'errors (truncated or damaged file)'
                    % (report.get('corruptions', 0),
                       report.get('check-errors', 0)))
    return ImageInfo(path=path, format=expected_format, virtual_size=vsize,
                     cluster_size=cluster or 65536, backing_file=backing)
