"""Live restore: the local restart starts the VM at once on its restore
point and pulls the data in while the guest runs (``[agent]
live_restore``).

1. The manifest is fetched from the manager; an NBD server of the agent
   (ha_snapshot/image/nbd_server.py, a unix socket in a private 0700
   directory) serves the restore point from it: each chunk is fetched over
   the bus when first read and checked against its sha256; chunks the
   manifest does not list are zeros.
2. A new overlay is made on that export (its chunks-absent ranges written
   as zero clusters) and the VM is started on it: ``recover_seconds``.
3. ``block-stream`` copies the rest into the overlay while the guest runs;
   when it completes the backing is gone from the graph and from the
   overlay's header, and the server stops: ``restored_seconds``.

When the source fails mid-stream (a chunk the manager cannot give, one
that fails its checksum, the VM dying), reads of data not yet copied fail
with EIO inside the guest and the stream job ends in error. The agent
retries the stream ``[agent] live_restore_retries`` times (a new job goes
on from where the last stopped; the export's client reconnects within
``live_restore_reconnect_delay``). If it still fails, the VM is killed,
its overlay deleted and the restart raises LiveRestoreFailed: the
recovery is recorded as failed with that reason, and what the guest wrote
since it was started is lost (the guest ran on a disk that was never
whole; nothing of it becomes a restore point). The manager's next
recovery attempt starts again from the restore point. Nothing is reported
restored before the stream has completed and the overlay stands alone.

May import ha_snapshot.image.*, ha_snapshot.hypervisor.* and
ha_snapshot.exception.
"""

import base64
import collections
import dataclasses
import hashlib
import os
import shutil
import tempfile
import threading
import time

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.hypervisor import live_restore as hv_live
from ha_snapshot.image import nbd_server
from ha_snapshot.image import qemu

LOG = logging.getLogger(__name__)

CACHE_CHUNKS = 8


class ChunkReader:
    """Reads of a restore point, from its manifest and ``get_chunk(index)
    -> base64 text``; a few chunks are kept (the stream and the guest read
    around the same places). Thread-safe."""

    def __init__(self, manifest: dict, get_chunk,
                 cache_chunks: int = CACHE_CHUNKS):
        self.id = manifest['id']
        self.size = int(manifest['virtual_size'])
        self.chunk_size = int(manifest['chunk_size'])
        self.chunks = {int(k): v for k, v in manifest['chunks'].items()}
        self.get_chunk = get_chunk
        self.fetched = 0
        self._cache = collections.OrderedDict()
        self._max = cache_chunks
        self._lock = threading.Lock()

    def _chunk(self, index: int) -> bytes | None:
        sha = self.chunks.get(index)
        if sha is None:
            return None
        with self._lock:
            data = self._cache.get(index)
            if data is not None:
                self._cache.move_to_end(index)
                return data
        data = base64.b64decode(self.get_chunk(index))
        if hashlib.sha256(data).hexdigest() != sha:
            raise exception.CorruptObject(
                'Chunk %d of restore point %s does not match its checksum.'
                % (index, self.id))
        want = min(self.chunk_size, self.size - index * self.chunk_size)
        if len(data) > want:
            raise exception.CorruptObject(
                'Chunk %d of restore point %s holds %d bytes, more than '
                'its %d.' % (index, self.id, len(data), want))
        data += bytes(want - len(data))
        with self._lock:
            self.fetched += 1
            self._cache[index] = data
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return data

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError('read of %d bytes at %d outside %d bytes'
                             % (length, offset, self.size))
        out = bytearray()
        while length:
            index, skip = divmod(offset, self.chunk_size)
            n = min(length, self.chunk_size - skip)
            data = self._chunk(index)
            out += bytes(n) if data is None else data[skip:skip + n]
            offset += n
            length -= n
        return bytes(out)


@dataclasses.dataclass
class Outcome:
    vm: object
    disk_path: str
    recover_seconds: float
    """From ``t0`` until the VM runs on the overlay."""
    restored_seconds: float
    """From ``t0`` until the stream completed and the backing was gone."""
    stream_attempts: int
    fetched_chunks: int

    def result(self) -> dict:
        return {'live': True, 'recover_seconds': round(
                    self.recover_seconds, 3),
                'restored_seconds': round(self.restored_seconds, 3),
                'stream_attempts': self.stream_attempts,
                'fetched_chunks': self.fetched_chunks}


def restore(conf, driver, manifest: dict, get_chunk, disk_path: str,
            start_vm, *, t0: float, name: str, speed: int | None = None,
            stop_event: threading.Event | None = None) -> Outcome:
    """Start the VM (``start_vm(disk_path) -> vm``) on the restore point of
    ``manifest`` and stream it in; an Outcome, or LiveRestoreFailed with
    the VM killed and ``disk_path`` removed."""
    opts = conf.agent
    reader = ChunkReader(manifest, get_chunk)
    rp = reader.id
    sockdir = tempfile.mkdtemp(prefix='hs-nbd-')
    server = nbd_server.NbdServer(os.path.join(sockdir, 'rp.sock'), rp,
                                  reader.size, reader.read)
    vm = None
    try:
        server.start()
        hv_live.create_overlay(
            disk_path, reader.size,
            hv_live.nbd_backing(server.path, rp,
                                opts.live_restore_reconnect_delay),
            hv_live.zero_ranges(reader.size, reader.chunk_size,
                                reader.chunks),
            limits=qemu.Limits.from_conf(conf))
        vm = start_vm(disk_path)
        running = time.monotonic() - t0
        LOG.info('VM %s runs on restore point %s after %.3f s; streaming '
                 '%d chunks into %s', name, rp, running, len(reader.chunks),
                 disk_path)
        attempts = _stream(driver, vm, name, rp, server, opts, speed,
                           stop_event or threading.Event())
        restored = time.monotonic() - t0
    except BaseException as e:
        if vm is not None:
            try:
                driver.kill(vm)
            except exception.HaSnapshotException as kill_error:
                LOG.warning('VM %s: kill after a failed live restore: %s',
                            name, kill_error)
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
        if os.path.exists(disk_path):
            os.unlink(disk_path)
        if isinstance(e, exception.LiveRestoreFailed) or not isinstance(
                e, exception.HaSnapshotException):
            raise
        raise exception.LiveRestoreFailed(
            vm=name, restore_point=rp,
            reason='%s%s' % (e, '; the VM was stopped' if vm else ''))
    server.stop()
    shutil.rmtree(sockdir, ignore_errors=True)
    LOG.info('VM %s: restore point %s restored after %.3f s (running after '
             '%.3f s; %d chunks fetched, %d stream attempts)', name, rp,
             restored, running, reader.fetched, attempts)
    return Outcome(vm=vm, disk_path=disk_path, recover_seconds=running,
                   restored_seconds=restored, stream_attempts=attempts,
                   fetched_chunks=reader.fetched)


def _stream(driver, vm, name, rp, server, opts, speed, stop_event) -> int:
    """Stream until the overlay stands alone; the attempts it took."""
    disk = driver.disks(vm)[0]
    node = disk.active.node
    deadline = time.monotonic() + opts.live_restore_timeout
    started = time.monotonic()
    delay = opts.retry_initial
    failures = []
    for attempt in range(1, opts.live_restore_retries + 2):
        try:
            hv_live.stream(driver, vm, node,
                           max(1.0, deadline - time.monotonic()), speed)
            backing = hv_live.backing_of(driver, vm, node)
            if backing is None:
                hv_live.flush(driver, vm, disk)
                return attempt
            failures.append('the stream ended but %s still has the backing '
                            '%s' % (node, backing))
        except exception.StreamFailed as e:
            failures.append(e.kwargs.get('reason') or str(e))
        LOG.warning('VM %s: stream attempt %d of restore point %s failed: '
                    '%s', name, attempt, rp, failures[-1])
        if not driver.is_alive(vm) or time.monotonic() >= deadline:
            break
        if attempt <= opts.live_restore_retries and stop_event.wait(delay):
            break
        delay = min(delay * 2, opts.retry_max)
    source = ('; the source\'s errors: %s' % '; '.join(server.errors[-3:])
              if server.errors else '')
    raise exception.LiveRestoreFailed(
        vm=name, restore_point=rp,
        reason='the stream failed %d time(s) (last: %s)%s. The VM was '
        'stopped and its overlay deleted: what the guest wrote in its %.1f '
        's on the partial disk is lost' % (
            len(failures), failures[-1], source,
            time.monotonic() - started))
