"""Live restore on the ``qemu`` driver: a disk that starts on an NBD
export and is pulled into a local overlay while the VM runs.

The overlay is a qcow2 file whose backing file name is a ``json:`` of a
``raw`` node over an ``nbd`` node (unix socket, ``reconnect-delay``):
QEMU opens that chain itself when the VM starts, so the driver's command
line does not change. Ranges known to be zero (the chunks a restore
point's manifest does not list) are written into the overlay as zero
clusters before the VM starts (L2 tables written directly, see
:func:`mark_zeros`): the guest reads them without asking the export and
``block-stream`` skips them, so a large, mostly empty disk costs what its
data costs.

:func:`stream` runs ``block-stream`` on the VM's disk node (no base: every
layer below goes) and waits for its end. When it completes, QEMU drops the
backing from the graph and from the overlay's header: the overlay stands
alone once :func:`flush` has written QEMU's cached qcow2 metadata (before
that the file on disk still lacks what was copied). When it fails (the
export answered errors, the VM died), the backing stays and the caller
decides (see ha_snapshot/agent/live_restore.py).

May import the standard library, oslo.log, ha_snapshot.exception,
ha_snapshot.image.qemu and ha_snapshot.hypervisor.*.
"""

import json
import os
import struct
import subprocess
import time

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.hypervisor import base
from ha_snapshot.hypervisor import blockgraph
from ha_snapshot.hypervisor import hmp
from ha_snapshot.hypervisor import qcow2new
from ha_snapshot.image import qemu

LOG = logging.getLogger(__name__)

CLUSTER_SIZE = 64 << 10
# NOTE: qemu-io refuses requests over ~2 GiB (BDRV_REQUEST_MAX_BYTES).
MAX_ZERO_REQUEST = 1 << 30
STREAM_JOB = '%s-stream' % blockgraph.OWN_PREFIX
OFLAG_COPIED = 1 << 63
ZERO_ENTRY = (1).to_bytes(8, 'big')
"""An L2 entry: no data, reads as zeros (QCOW_OFLAG_ZERO)."""


def nbd_backing(socket_path: str, export: str,
                reconnect_delay: int) -> str:
    """The backing file name of an overlay on the NBD export."""
    return 'json:' + json.dumps({
        'driver': 'raw',
        'file': {'driver': 'nbd', 'export': export,
                 'server': {'type': 'unix',
                            'path': os.path.abspath(socket_path)},
                 'reconnect-delay': int(reconnect_delay)}},
        separators=(',', ':'))


def zero_ranges(size: int, chunk_size: int, present) -> list:
    """(offset, length) of the chunks not in ``present`` (indexes), merged
    and cut into pieces qemu-io accepts."""
    out = []
    start = None
    count = -(-size // chunk_size)
    for index in range(count + 1):
        hole = index < count and index not in present
        if hole and start is None:
            start = index * chunk_size
        elif not hole and start is not None:
            end = min(index * chunk_size, size)
            while start < end:
                piece = min(end - start, MAX_ZERO_REQUEST)
                out.append((start, piece))
                start += piece
            start = None
    return out


def create_overlay(path: str, size: int, backing: str, zeros: list,
                   limits: qemu.Limits | None = None) -> None:
    """An overlay on ``backing`` (a raw json: name) with ``zeros`` written
    as zero clusters, fsynced; nothing opens the backing. Raises
    ImageError (the file is removed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o600)
    os.close(fd)
    try:
        if qcow2new.layout_fits(size, CLUSTER_SIZE, backing, 'raw'):
            qcow2new.create(path, size, CLUSTER_SIZE, backing, 'raw')
            if mark_zeros(path, size, zeros):
                return
        else:
            os.unlink(path)
            qemu.run(path, 'qemu-img', 'create', '-q', '-f', 'qcow2', '-u',
                     '-F', 'raw', '-b', backing, '-o',
                     'cluster_size=%d' % CLUSTER_SIZE, path, str(size),
                     limits=limits)
        if zeros:
            _write_zeros(path, zeros, limits or qemu.DEFAULT_LIMITS)
    except BaseException:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        raise


def mark_zeros(path: str, size: int, zeros: list) -> bool:
    """Write ``zeros`` as zero clusters (L2 entries with the zero flag, no
    data) into an empty overlay that qcow2new just wrote; False, with the
    file untouched, when its layout is not that one (then qemu-io does
    it). Clusters only partly inside a range stay unallocated: the export
    answers their zeros.

    NOTE: qemu-io took 0.2-0.75 s for 1024-4096 scattered ranges of a
    64 GiB disk (a request each), all of it before the VM may start; the
    tables written here are the same and take milliseconds.
    """
    if not zeros:
        return True
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        header = os.pread(fd, 104, 0)
        (magic, version, cluster_bits, vsize, l1_size, l1_offset,
         rt_offset, rt_clusters, incompatible, refcount_order) = (
            header[0:4], *struct.unpack('>I', header[4:8]),
            *struct.unpack('>I', header[20:24]),
            *struct.unpack('>Q', header[24:32]),
            *struct.unpack('>IQQI', header[36:60]),
            *struct.unpack('>Q', header[72:80]),
            *struct.unpack('>I', header[96:100]))
        cs = 1 << cluster_bits
        per_l2 = cs // 8
        l1_bytes = os.pread(fd, l1_size * 8, l1_offset)
        if (magic, version, vsize, incompatible, refcount_order,
                rt_clusters) != (b'QFI\xfb', 3, size, 0, 4, 1) or (
                    l1_bytes.strip(b'\0') or len(l1_bytes) != l1_size * 8):
            return False
        (block,) = struct.unpack('>Q', os.pread(fd, 8, rt_offset))
        first_free = -(-(l1_offset + l1_size * 8) // cs)
        if os.fstat(fd).st_size > first_free * cs:
            return False  # NOTE: something after the L1 table
        tables = {}
        for offset, length in zeros:
            end = offset + length
            first = -(-offset // cs)
            last = (end if end < size else -(-end // cs) * cs) // cs
            while first < last:
                j, k = divmod(first, per_l2)
                n = min(last - first, per_l2 - k)
                table = tables.setdefault(j, bytearray(cs))
                table[k * 8:(k + n) * 8] = ZERO_ENTRY * n
                first += n
        if first_free + len(tables) > cs // 2 or (
                max(tables, default=0) >= l1_size):
            return False  # NOTE: more than the one refcount block covers
        l1 = bytearray(l1_bytes)
        for i, j in enumerate(sorted(tables)):
            where = (first_free + i) * cs
            os.pwrite(fd, tables[j], where)
            l1[j * 8:j * 8 + 8] = struct.pack('>Q', where | OFLAG_COPIED)
        os.pwrite(fd, b'\0\1' * len(tables), block + first_free * 2)
        os.pwrite(fd, bytes(l1), l1_offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _write_zeros(path: str, zeros: list, limits: qemu.Limits) -> None:
    # NOTE: the overlay opened alone (null backing), flushes left to one
    # fsync at the end: with a flush per request 63 GiB took 1.7 s.
    name = 'json:' + json.dumps({
        'driver': 'qcow2', 'backing': None, 'cache': {'no-flush': True},
        'file': {'driver': 'file', 'filename': path}})
    script = ''.join('write -z %d %d\n' % z for z in zeros) + 'quit\n'
    cmd = ('qemu-io', name)
    try:
        r = subprocess.run(limits.wrap(cmd) or cmd, input=script,
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, LC_ALL='C', LANG='C'))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise exception.QemuImgError(path=path, reason='qemu-io: %s' % e)
    failed = [line for line in (r.stdout + r.stderr).splitlines()
              if 'failed' in line or 'error' in line.lower()]
    if r.returncode or failed:
        raise exception.QemuImgError(
            path=path, reason='zeroing %d ranges: %s' % (
                len(zeros), (failed or [r.stderr.strip()])[-1][:300]))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stream(driver, vm, node: str, timeout: float,
           speed: int | None = None) -> dict:
    """``block-stream`` everything below ``node`` into it and wait.

    Returns {'seconds', 'bytes'}; raises StreamFailed (the job failed,
    was cancelled or did not end in ``timeout``: then it is cancelled).
    """
    job_id = '%s-%s-%d' % (STREAM_JOB, vm.token, vm.next_seq())
    args = {'job-id': job_id, 'device': node}
    if speed:
        args['speed'] = int(speed)
    waiter = vm.jobs.add(job_id)
    t0 = time.monotonic()
    try:
        driver.qmp(vm, 'block-stream', args)
    except base.HypervisorError as e:
        vm.jobs.remove(job_id)
        raise exception.StreamFailed(vm=vm.name, node=node, reason=str(e))
    try:
        if not waiter.done.wait(timeout):
            try:
                driver.qmp(vm, 'block-job-cancel',
                           {'device': job_id, 'force': True})
            except base.HypervisorError as e:
                LOG.warning('VM %s: cancelling %s: %s', vm.name, job_id, e)
            waiter.done.wait(driver.opts.command_timeout)
            if not waiter.error:
                waiter.error = ('not finished within %s s; the job was '
                                'cancelled' % timeout)
    finally:
        vm.jobs.remove(job_id)
    if waiter.error:
        raise exception.StreamFailed(vm=vm.name, node=node,
                                     reason=waiter.error)
    return {'seconds': time.monotonic() - t0, 'bytes': waiter.length}


def backing_of(driver, vm, node: str) -> str | None:
    """The backing file name ``node`` has open now (None: it stands
    alone)."""
    for n in driver.qmp(vm, 'query-named-block-nodes', {'flat': True}):
        if n.get('node-name') == node:
            return n.get('backing_file') or None
    raise base.DiskNotFound(vm=vm.name, disk=node, known='(no such node)')


def flush(driver, vm, disk: base.Disk) -> None:
    """Make what the stream copied durable (QEMU keeps qcow2 metadata in
    its cache until a flush); raises StreamFailed."""
    target = '-d %s' % disk.device if disk.device else disk.active.node
    try:
        hmp.qemu_io(driver, vm, target, 'flush')
    except base.HypervisorError as e:
        raise exception.StreamFailed(vm=vm.name, node=disk.active.node,
                                     reason='flush after the stream: %s' % e)
