"""The agent's side of memory states (``[agent] memory_interval``).

* :class:`MemorySaver`: whether this snapshot also saves the VM's memory
  (every ``memory_interval`` seconds or the spec's ``memory`` setting,
  qemu-driver VMs with a machine that the agent could start again), and
  the save itself: the driver's disk snapshot and memory state of one
  instant, the stream chunked and compressed into a spool file beside the
  instance's state (ha_snapshot/memory_state.py). A save that fails
  leaves the disk snapshot standing, without memory.
* :func:`ship`: after the delta's durable ack, the state's chunks the store
  lacks go to the manager (a few MiB per call), then its manifest; the
  spool is removed. A state the manager refuses is dropped (the restore
  point stays, without memory).
* :func:`resume`: a restart from a point with a memory state starts QEMU
  with the same configuration and ``-incoming``; None when the point has
  none, the configuration differs or the load fails (the caller boots the
  VM from its disk as before).

May import the hypervisor contract, ha_snapshot.memory_state and the
exception hierarchy; the manager is reached through the client given.
"""

import base64
import hashlib
import os
import shutil
import time
import uuid

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.hypervisor import process
from ha_snapshot import memory_state

LOG = logging.getLogger(__name__)

# NOTE: compressed bytes per put_memory_chunks call (a chunk is at most
# memory_state.MAX_CHUNK before compression).
BATCH_BYTES = 4 << 20
# NOTE: non-transient refusals: sending again would be refused again.
REFUSED = (exception.InvalidMemoryState, exception.RestorePointNotFound,
           exception.InstanceNotFound, exception.CorruptObject)


class MemorySaver:
    """When and how one instance's snapshots save memory."""

    def __init__(self, conf, driver, clock=time.monotonic):
        self.conf = conf
        self.driver = driver
        self.clock = clock
        self._last = None
        self.saved = 0
        self.failed = 0
        self.last = None
        """The latest save's figures (MemorySave), for the demo and
        operators."""

    def due(self, spec) -> bool:
        every = spec.memory_every(self.conf.agent.memory_interval)
        if not every or not hasattr(self.driver, 'snapshot_with_memory'):
            return False
        if spec.vm is None or (spec.vm.machine or 'none') == 'none':
            return False
        return every < 0 or self._last is None or (
            self.clock() - self._last >= every)

    def take(self, vm, workdir: str) -> tuple:
        """(Snapshot, spool path or None)."""
        self._last = self.clock()
        os.makedirs(workdir, exist_ok=True)
        spool = os.path.join(workdir, 'memory-%s.hsm' % uuid.uuid4().hex)
        writer = memory_state.SpoolWriter(spool)
        try:
            snap, saved = self.driver.snapshot_with_memory(
                vm, writer.write, wait=30,
                timeout=self.conf.agent.memory_save_timeout)
        except BaseException:
            writer.abort()
            raise
        self.last = saved
        if saved.error is not None:
            writer.abort()
            self.failed += 1
            LOG.warning('VM %s: memory state not saved (%s); this restore '
                        'point has its disk only', vm.name, saved.error)
            return snap, None
        try:
            index = writer.finish(memory_state.proc_config(vm.pid),
                                  saved_at=saved.stopped_at,
                                  save_seconds=saved.save_seconds,
                                  pause_seconds=saved.pause_seconds)
        except OSError as e:
            writer.abort()
            self.failed += 1
            LOG.warning('VM %s: memory state not kept: %s', vm.name, e)
            return snap, None
        self.saved += 1
        LOG.info('VM %s: memory state saved with the snapshot (%d bytes in '
                 '%d chunks, %d stored locally; guest paused %s ms, save '
                 '%.2f s)', vm.name, index.size, len(index.chunks),
                 os.path.getsize(spool),
                 '%.1f' % (saved.pause_seconds * 1000)
                 if saved.pause_seconds is not None else '?',
                 saved.save_seconds)
        return snap, spool


def ship(owner, queue, entry) -> int | None:
    """Send ``entry``'s memory state for its acknowledged restore point;
    compressed bytes sent, None when dropped. The entry forgets its spool
    either way (saved in the queue)."""
    api, instance, rp = owner.manager_api, owner.instance, entry.restore_point
    spool = entry.memory
    sent = None
    try:
        sent = _send(owner, api, instance, rp, spool)
    except REFUSED as e:
        LOG.error('Instance %s: memory state of %s refused: %s', instance,
                  rp, e)
    except exception.MemorySpoolError as e:
        LOG.error('Instance %s: memory state of %s dropped: %s', instance,
                  rp, e)
    with queue.lock:
        entry.memory = None
        queue.save()
    memory_state.remove_spool(spool)
    return sent


def _send(owner, api, instance, rp, spool) -> int | None:
    if not api.can_memory_state():
        LOG.warning('Instance %s: the manager takes no memory states (RPC '
                    'API below 1.4); %s has its disk only', instance, rp)
        return None
    index = memory_state.load_index(spool)
    shas = list(dict.fromkeys(c.sha256 for c in index.chunks))
    missing = set(owner._retry('memory chunk query of %s' % rp,
                               api.memory_chunks_missing, instance, rp,
                               shas))
    sent, batch, size = 0, [], 0

    def flush():
        owner._retry('memory chunks of %s' % rp, api.put_memory_chunks,
                     instance, rp, batch)
    with open(spool, 'rb') as f:
        for ref in index.chunks:
            if ref.sha256 not in missing:
                continue
            missing.discard(ref.sha256)
            frame = memory_state.read_frame(f, ref)
            batch.append([ref.sha256, ref.length,
                          base64.b64encode(frame).decode()])
            size += len(frame)
            if size >= BATCH_BYTES:
                flush()
                sent += size
                batch, size = [], 0
        if batch:
            flush()
            sent += size
    owner._retry('memory state of %s' % rp, api.commit_memory_state,
                 instance, rp, index.manifest())
    LOG.info('Instance %s: memory state of %s durable (%d bytes, %d new '
             'bytes sent)', instance, rp, index.size, sent)
    return sent


def resume(conf, driver, manager_api, instance: str, restore_point: str,
           vm_spec: hv_base.VMSpec, fetch_disk) -> tuple:
    """``(vm or None, info)``: the VM resumed from the point's memory
    state, or None (info says why) and the caller boots it.
    ``fetch_disk()`` writes the restore point's disk where ``vm_spec``
    has it; called only when there is a state to resume."""
    info = {'memory_state_restored': False, 'resumed_without_reboot': False}
    if not hasattr(driver, 'resume') or not hasattr(manager_api,
                                                     'get_memory_state'):
        return None, info
    try:
        state = manager_api.get_memory_state(instance, restore_point)
    except exception.HaSnapshotException as e:
        LOG.warning('Instance %s: memory state of %s unreadable (%s); '
                    'booting', instance, restore_point, e)
        info['memory_state_error'] = str(e)
        return None, info
    if state is None:
        return None, info
    binary = shutil.which(driver.opts.binary) or driver.opts.binary
    try:
        memory_state.check_config(
            vm_spec.name, state['config'], memory_state.config_of(
                process.command_line(binary, vm_spec)))
    except exception.MemoryStateMismatch as e:
        LOG.error('Instance %s: %s', instance, e)
        info['memory_state_error'] = str(e)
        return None, info

    fetch_disk()

    def chunks():
        for i, (sha, length) in enumerate(state['chunks']):
            data = base64.b64decode(manager_api.get_memory_chunk(
                instance, restore_point, i))
            if len(data) != length or (
                    hashlib.sha256(data).hexdigest() != sha):
                raise exception.MemoryStateError(
                    vm=vm_spec.name, reason='chunk %d does not match its '
                    'sha256' % i)
            yield data
    try:
        vm, seconds = driver.resume(vm_spec, chunks(),
                                    timeout=conf.agent.memory_save_timeout)
    except exception.MemoryStateError as e:
        LOG.error('Instance %s: not resumed from the memory state of %s '
                  '(%s); booting', instance, restore_point, e)
        info['memory_state_error'] = str(e)
        return None, info
    info.update(memory_state_restored=True, resumed_without_reboot=True,
                resume_seconds=round(seconds, 3))
    return vm, info
