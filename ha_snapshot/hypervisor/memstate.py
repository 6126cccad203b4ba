"""The qemu driver's memory state: saved with a disk snapshot at one
instant, and a new QEMU resumed from it.

Save (QEMU 7.2, ``background-snapshot``: the RAM saved is the RAM at the
instant the migration starts): ``stop``, the disk snapshot transaction,
then ``migrate`` to a pipe passed with ``getfd``; a thread reads the pipe
into the caller's sink. QEMU 7.2's snapshot thread restarts the guest by
itself once the device state is saved (an earlier ``cont`` would make the
memory newer than the frozen disk); if it is still paused once the
migration completed, it gets a ``cont`` then. The guest pause is the time
between the STOP and RESUME events (QEMU's clock). When the memory part
fails after the disk snapshot, the disk snapshot stands and the failure is
reported beside it: the restore point then has no memory state.

Resume: QEMU started with the same command line plus ``-S -incoming
defer``, the state fed into a pipe by a thread, ``migrate-incoming``, the
MIGRATION event ``completed``, ``cont``. Any failure kills that QEMU.

May import the standard library and ha_snapshot.hypervisor.* only.
"""

import dataclasses
import os
import threading
import time

from oslo_log import log as logging

from ha_snapshot.hypervisor import base
from ha_snapshot.hypervisor import process
from ha_snapshot.hypervisor import snapshots

LOG = logging.getLogger(__name__)

FDNAME = 'hs-memstate'
READ_SIZE = 1 << 20
_DONE = ('completed', 'failed', 'cancelled')


@dataclasses.dataclass
class MemorySave:
    """How a memory save went (``error`` None: the sink got it all)."""
    bytes: int = 0
    save_seconds: float = 0.0
    pause_seconds: float | None = None
    sink_seconds: float = 0.0
    """Time spent in the sink (chunking, compressing, writing): QEMU
    waits on the pipe meanwhile."""
    stopped_at: float | None = None
    """Wall-clock time of the STOP event: the instant saved."""
    error: str | None = None


class _Watch:
    """STOP/RESUME times and the MIGRATION outcome of one VM. A VM that
    dies (its monitor closes, its QEMU exits) ends the migration too:
    no MIGRATION event comes then, and a save that waited for one would
    hold the VM's snapshot thread, and the restart of that VM, until its
    timeout."""

    def __init__(self, driver, vm):
        self.done = threading.Event()
        self.status = None
        self.stopped_at = self.resumed_at = None
        self._sub = driver.subscribe(vm, self._on, (
            'MIGRATION', 'STOP', 'RESUME', base.MONITOR_CLOSED,
            base.PROCESS_EXITED))

    def _on(self, event) -> None:
        if event.kind == 'STOP' and self.stopped_at is None:
            self.stopped_at = event.timestamp
        elif event.kind == 'RESUME' and self.stopped_at is not None and (
                self.resumed_at is None):
            self.resumed_at = event.timestamp
        elif event.kind == 'MIGRATION':
            status = event.data.get('status')
            if status in _DONE:
                self.status = status
                self.done.set()
        elif event.kind in (base.MONITOR_CLOSED, base.PROCESS_EXITED) and (
                not self.done.is_set()):
            self.status = 'interrupted (%s)' % event.kind
            self.done.set()

    def cancel(self) -> None:
        self._sub.cancel()


def _set_capabilities(driver, vm, background: bool) -> None:
    caps = [{'capability': 'events', 'state': True}]
    if background:
        caps.append({'capability': 'background-snapshot', 'state': True})
    driver.qmp(vm, 'migrate-set-capabilities', {'capabilities': caps})


def _pass_fd(driver, vm, fd: int) -> None:
    driver.qmp(vm, 'getfd', {'fdname': FDNAME}, fd=fd)


def _reader(fd: int, sink, result: MemorySave) -> None:
    try:
        while True:
            data = os.read(fd, READ_SIZE)
            if not data:
                return
            result.bytes += len(data)
            t = time.perf_counter()
            sink(data)
            result.sink_seconds += time.perf_counter() - t
    except Exception as e:  # NOTE: reported with the save
        result.error = 'writing the state: %s' % e
        LOG.exception('memory state sink failed')
    finally:
        os.close(fd)


def save(driver, vm, sink, timeout: float) -> tuple:
    """Disk snapshot + memory state of one instant: ``(Snapshot,
    MemorySave)``. ``sink(bytes)`` gets the stream, in order, from a
    thread. Call under the VM's operation lock."""
    result = MemorySave()
    t0 = time.monotonic()
    running = bool(driver.qmp(vm, 'query-status').get('running'))
    _set_capabilities(driver, vm, background=True)
    r, w = os.pipe()
    try:
        _pass_fd(driver, vm, w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    reader = threading.Thread(target=_reader, args=(r, sink, result),
                              daemon=True, name='memsave-%s' % vm.name)
    reader.start()
    watch = _Watch(driver, vm)
    snap = None
    try:
        # NOTE: flushed while the guest runs: the pause is the switch.
        preflush = driver.opts.snapshot_preflush
        if preflush:
            snapshots.flush_disks(driver, vm)
        if running:
            vm.own_stops += 1
            try:
                driver.qmp(vm, 'stop')
            except BaseException:
                vm.own_stops = max(0, vm.own_stops - 1)
                raise
        try:
            snap = snapshots.take_snapshot(driver, vm, preflush=False)
        except BaseException:
            _cont(driver, vm, running)
            raise
        try:
            driver.qmp(vm, 'migrate', {'uri': 'fd:%s' % FDNAME})
        except base.HypervisorError as e:
            result.error = 'migrate: %s' % e
            _close_fd(driver, vm)
            _cont(driver, vm, running)
        if result.error is None:
            _wait(driver, vm, watch, result, t0 + timeout)
            _cont(driver, vm, running)
    except BaseException:
        if snap is None:
            # NOTE: else the reader waits for ever on QEMU's copy.
            _close_fd(driver, vm)
        raise
    finally:
        watch.cancel()
    reader.join(max(1.0, t0 + timeout - time.monotonic()))
    if reader.is_alive() and result.error is None:
        result.error = 'the state stream did not end'
    result.stopped_at = watch.stopped_at
    if running and watch.stopped_at and watch.resumed_at:
        result.pause_seconds = watch.resumed_at - watch.stopped_at
    result.save_seconds = time.monotonic() - t0
    return snap, result


def _wait(driver, vm, watch, result, deadline) -> None:
    if not watch.done.wait(max(0.0, deadline - time.monotonic())):
        try:
            driver.qmp(vm, 'migrate_cancel')
        except base.HypervisorError as e:
            LOG.warning('VM %s: migrate_cancel: %s', vm.name, e)
        watch.done.wait(10)
        result.error = 'not saved within the timeout'
        return
    if watch.status != 'completed':
        info = {}
        try:
            info = driver.qmp(vm, 'query-migrate')
        except base.HypervisorError:
            pass
        result.error = 'migration %s: %s' % (
            watch.status, info.get('error-desc', 'no reason given'))


def _close_fd(driver, vm) -> None:
    try:
        driver.qmp(vm, 'closefd', {'fdname': FDNAME})
    except base.HypervisorError:
        pass  # NOTE: QEMU took (and closed) it already


def _cont(driver, vm, running: bool) -> None:
    """Let a guest that was running go on, unless QEMU did already."""
    if not running:
        return
    if not driver.qmp(vm, 'query-status').get('running'):
        driver.qmp(vm, 'cont')


# --- resume ------------------------------------------------------------------

def resume(driver, spec: base.VMSpec, chunks, timeout: float) -> tuple:
    """Start ``spec`` from a saved state; ``chunks`` iterates over its
    bytes (read by a thread). ``(vm, seconds from the start of QEMU to the
    guest running)``; raises MemoryStateError (QEMU killed) on failure."""
    spec = dataclasses.replace(spec, paused=True, extra_args=tuple(
        spec.extra_args) + ('-incoming', 'defer'))
    t0 = time.monotonic()
    vm = driver.start(spec)
    feed_error = []
    try:
        _set_capabilities(driver, vm, background=False)
        watch = _Watch(driver, vm)
        r, w = os.pipe()
        try:
            _pass_fd(driver, vm, r)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        writer = threading.Thread(target=_feed, args=(w, chunks, feed_error),
                                  daemon=True, name='memload-%s' % spec.name)
        writer.start()
        try:
            driver.qmp(vm, 'migrate-incoming', {'uri': 'fd:%s' % FDNAME})
            if not watch.done.wait(timeout):
                raise base.MemoryStateError(
                    vm=spec.name, reason='not loaded within %s s' % timeout)
            if watch.status != 'completed':
                raise base.MemoryStateError(
                    vm=spec.name, reason='loading it %s (QEMU log %s:%s)'
                    % (watch.status, spec.log_path,
                       process.log_tail(spec.log_path, 5)))
        finally:
            watch.cancel()
            writer.join(timeout)
        if feed_error:
            raise base.MemoryStateError(vm=spec.name, reason=feed_error[0])
        driver.qmp(vm, 'cont')
    except BaseException as e:
        driver.kill(vm)
        if isinstance(e, base.MemoryStateError):
            raise
        if isinstance(e, base.HypervisorError):
            raise base.MemoryStateError(vm=spec.name, reason=str(e))
        raise
    return vm, time.monotonic() - t0


def _feed(fd: int, chunks, errors: list) -> None:
    try:
        for data in chunks:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass  # NOTE: QEMU stopped reading: its MIGRATION event says why
    except Exception as e:
        errors.append('reading the saved state: %s' % e)
    finally:
        os.close(fd)

