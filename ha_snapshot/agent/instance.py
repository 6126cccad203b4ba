"""One protected VM's snapshot agent: the snapshot loop, and its shipper.

Two threads per instance. The snapshot loop (:class:`SnapshotAgent`, here)
asks the policy how long to wait, waits, and snapshots; each snapshot's
frozen overlay joins the instance's persisted pending queue
(:class:`ha_snapshot.agent.state.PendingQueue`). The shipper
(ha_snapshot/agent/shipper.py) sends the queue's deltas oldest first until
the manager's durable ack, then commits the acknowledged overlay down.
Snapshots thus go on while earlier deltas ship (the interval is not
bounded below by the shipping time), up to ``[agent] max_pending_deltas``
unacknowledged deltas; commits stay in order. The state file is written
at every step, so a killed agent resends what was never acknowledged and
nothing is lost.

May import the hypervisor contract, the policy figures, the queue and the
shipper; the health monitor lives next door (agent/health.py).
"""

import os
import threading
import time

from oslo_log import log as logging

from ha_snapshot.agent import disks as disks_mod
from ha_snapshot.agent import memory as memory_mod
from ha_snapshot.agent import shipper as shipper_mod
from ha_snapshot.agent import state as state_mod
from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot import memory_state
from ha_snapshot.policy import metrics
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

TRANSIENT = shipper_mod.TRANSIENT
RECENT_RESTORE_POINTS = shipper_mod.RECENT_RESTORE_POINTS

# NOTE: raised from deep in a wait; every loop catches it first.
Stopped = exception.AgentStopped


def _recorded(name: str) -> property:
    """A read-only view of the shipper's :class:`shipper.Durable`."""
    return property(lambda self: getattr(self.durable_record, name))


class SnapshotAgent(threading.Thread):

    def __init__(self, conf, driver, manager_api, state, policy, host: str,
                 reporter=None, sampler=None, app_metrics=None,
                 clock=time.monotonic, on_moved=None):
        super().__init__(name='snap-%s' % state.instance[:8], daemon=True)
        self.conf = conf
        self.driver = driver
        self.manager_api = manager_api
        self.state = state
        self.policy = policy
        self.host = host
        self.reporter = reporter
        self.on_moved = on_moved
        """``on_moved(instance, error)``: the manager answered that the
        instance moved to another host (evacuated while this one was
        away): the agent service stops protecting it here."""
        self.sampler = sampler
        self.app_metrics = app_metrics
        self.clock = clock
        self.vm = None
        self._stopping = threading.Event()
        self._now_event = threading.Event()
        self.queue = state_mod.PendingQueue(state, conf.agent.state_dir)
        self.lock = self.queue.lock
        """Guards the state (pending list, parent, sequence) and its file:
        the snapshot loop and the shipper both change it."""
        self.failed = threading.Event()
        self.durable_record = shipper_mod.Durable(clock)
        """What became durable lately (read it under ``durable``)."""
        self.shipper = shipper_mod.Shipper(self, self.queue,
                                           self.durable_record)
        self._write_meter = metrics.WriteRateMeter()
        self._last_snapshot_at = None
        self._last_quiesce_at = None
        self.memory = memory_mod.MemorySaver(conf, driver, clock)
        """Memory states ([agent] memory_interval)."""
        self.app_consistent = 0
        """Application-consistent ('filesystem') snapshots taken."""
        self.quiesce_failures = 0
        """Quiesced snapshots refused (the server requires quiesce and
        its guest agent could not freeze it)."""
        self.error = None
        self.start_deadline = None
        """Set (a ``clock()`` value) when the VM was re-baselined while
        stopped: the snapshots begin once it runs, until then at most."""

    @property
    def instance(self) -> str:
        return self.state.instance

    def save(self) -> None:
        self.queue.save()

    # NOTE: what the policy, the demo, the benchmarks and operators read;
    # the shipper keeps it (shipper.Durable).
    durable = _recorded('cond')
    last_durable_at = _recorded('last_durable_at')
    last_delta_bytes = _recorded('last_delta_bytes')
    last_ship_seconds = _recorded('last_ship_seconds')
    shipped_bytes = _recorded('shipped_bytes')
    shipped_changed_bytes = _recorded('shipped_changed_bytes')
    shipped_memory_bytes = _recorded('shipped_memory_bytes')
    restore_points = _recorded('restore_points')
    taken_at = _recorded('taken_at')
    durable_count = _recorded('count')

    # --- control ------------------------------------------------------------

    def stop(self, timeout: float | None = 30) -> None:
        self._stopping.set()
        self._now_event.set()
        self.queue.wake()
        me = threading.current_thread()
        if self.is_alive() and me is not self:
            self.join(timeout)
        self.shipper.join(timeout)

    def snapshot_now(self) -> None:
        """Cut the current wait short (tests, the demo, operators)."""
        self._now_event.set()

    def mark_failed(self, reason: str) -> None:
        """The VM is gone or sick: stop snapshotting until restarted."""
        if not self.failed.is_set():
            LOG.warning('Instance %s: protection paused: %s', self.instance,
                        reason)
        self.failed.set()
        self._now_event.set()
        with self.queue.progress:
            self.queue.progress.notify_all()

    def _wait(self, seconds: float) -> None:
        self._now_event.wait(max(0.0, seconds))
        self._now_event.clear()
        if self._stopping.is_set():
            raise Stopped()

    def _retry(self, what: str, func, *args, **kwargs):
        delay = self.conf.agent.retry_initial
        while True:
            if self._stopping.is_set():
                raise Stopped()
            try:
                return func(*args, **kwargs)
            except TRANSIENT as e:
                LOG.warning('Instance %s: %s failed (%s: %s); retrying in '
                            '%.1f s', self.instance, what, type(e).__name__,
                            e, delay)
                if self._stopping.wait(delay):
                    raise Stopped()
                delay = min(delay * 2, self.conf.agent.retry_max)

    # --- the loop -----------------------------------------------------------

    def run(self) -> None:
        delay = self.conf.agent.retry_initial
        while not self._stopping.is_set():
            try:
                self._run()
                return
            except Stopped:
                return
            except exception.InstanceMoved as e:
                if self.on_moved is not None:
                    self.on_moved(self.instance, e)
                return
            except hv_base.VMNotRunning as e:
                # NOTE: the health monitor reports the VM; nothing to add.
                self.mark_failed(str(e))
                return
            except Exception as e:
                # NOTE: our own failure is not the VM's: reporting it would
                # have the manager roll a healthy VM back. Log it, keep
                # every unacknowledged overlay, and start the loop again.
                delay = self._back_off(e, delay, 'snapshot agent error; the '
                                       'loop')
                if delay is None:
                    return

    def _back_off(self, error, delay: float, what: str) -> float | None:
        """Log an error of ours and wait ``delay``; the next delay, or None
        when the agent is asked to stop meanwhile."""
        self.error = error
        LOG.exception('Instance %s: %s starts again in %.1f s',
                      self.instance, what, delay)
        if self._stopping.wait(delay):
            return None
        return min(delay * 2, self.conf.agent.retry_max)

    def _attach(self):
        spec = self.state.spec
        # NOTE: a libvirt domain is found by its name or uuid alone.
        self.vm = self.driver.attach(spec.domain or spec.name,
                                     spec.qmp_path, spec.pid,
                                     log_path=spec.log_path,
                                     agent_path=spec.qga_path)
        return self.vm

    def _register(self) -> None:
        reg = self._retry('registration', self.manager_api.register_instance,
                          self.instance, self.state.project, self.host,
                          self.state.spec.driver
                          or self.conf.agent.hypervisor,
                          {'disk': self.state.spec.disk})
        newest, last = reg['newest_restore_point'], reg['last_sequence']
        with self.lock:
            self.state.next_sequence = max(self.state.next_sequence,
                                           last + 1)
            if not self.state.pending or all(p.restore_point
                                             for p in self.state.pending):
                self.state.parent = newest
            self.save()

    def _run(self) -> None:
        # NOTE: registered first: a server evacuated while this host was
        # away is refused (InstanceMoved) before its old domain is looked
        # at.
        self._register()
        if self.vm is None:
            self._attach()
        self._adopt_unknown_overlays()
        if self.shipper.thread is None:
            self.shipper.start()
        if self.start_deadline is not None:
            self._await_start()
        while not self._stopping.is_set():
            if self.failed.is_set():
                self._wait(3600)
                continue
            decision = self._decide()
            # NOTE: the policy's interval runs from the latest snapshot;
            # the first one (the baseline) is taken at once.
            if self._last_snapshot_at is not None:
                self._wait(decision.interval_seconds
                           - (self.clock() - self._last_snapshot_at))
            if self.failed.is_set():
                continue
            self._wait_for_room()
            if self.failed.is_set():
                continue
            self._snapshot()

    def _await_start(self) -> None:
        """Until the VM runs: the first snapshot must find it running,
        its bitmaps holding every write of its guest."""
        while not self.driver.is_alive(self.vm):
            if self.clock() >= self.start_deadline:
                raise hv_base.VMNotRunning(
                    vm=self.instance, reason='not started within [agent] '
                    'rebaseline_start_timeout of its re-baseline')
            if self._stopping.wait(self.conf.agent.health_interval):
                raise Stopped()
        self.start_deadline = None
        LOG.info('Instance %s: running after its re-baseline; snapshots '
                 'begin', self.instance)

    def _wait_for_room(self) -> None:
        """Block while [agent] max_pending_deltas deltas wait for their
        ack: a manager that is away must not grow the VM's chain (and its
        I/O path) without bound."""
        limit = self.conf.agent.max_pending_deltas
        queue = self.queue
        with queue.progress:
            if queue.unacknowledged() >= limit:
                LOG.info('Instance %s: %d deltas wait for the manager; the '
                         'next snapshot waits for one of them',
                         self.instance, queue.unacknowledged())
            while (queue.unacknowledged() >= limit
                   and not self._stopping.is_set()
                   and not self.failed.is_set()):
                queue.progress.wait(1.0)
        if self._stopping.is_set():
            raise Stopped()

    def _decide(self):
        figures = self._figures()
        # NOTE: the policy logs every decision with its inputs.
        return self.policy.next_interval(figures)

    def _figures(self):
        now = self.clock()
        rate = None
        try:
            stats = self.driver.blockstats(self.vm).get(self._disk_name())
        except exception.HaSnapshotException:
            stats = None
        if stats is not None:
            # NOTE: a bare block node (no guest device) has no I/O
            # accounting; its highest written offset is all there is.
            rate = self._write_meter.update(
                stats.wr_bytes if stats.accounted
                else stats.wr_highest_offset, now)
        host = self.sampler.sample().figures() if self.sampler else {}
        app = (self.app_metrics.collect(self.instance)
               if self.app_metrics else {})
        return metrics.Figures(
            now=now, write_rate_bps=rate,
            last_delta_bytes=self.last_delta_bytes,
            last_ship_seconds=self.last_ship_seconds,
            last_durable_at=self.last_durable_at, app_figures=app, **host)

    def _disk_name(self) -> str:
        name = self.state.spec.disk
        if name:
            return name
        disks = self.driver.disks(self.vm)
        if not disks:
            raise hv_base.DiskNotFound(vm=self.instance, disk='any',
                                       known='none')
        with self.lock:
            self.state.spec = self.state.spec.replace(disk=disks[0].name)
            self.save()
        return disks[0].name

    # --- snapshot -----------------------------------------------------------

    def _quiesce_due(self) -> bool:
        """Whether this snapshot freezes the guest first: every
        ``[agent] quiesce_interval`` seconds, or the server's own
        setting (spec ``quiesce``). The interval runs from the last try,
        so a silent agent costs one ping per interval, not per snapshot."""
        every = self.state.spec.quiesce_every(
            self.conf.agent.quiesce_interval)
        if every == 0:
            return False
        return every < 0 or self._last_quiesce_at is None or (
            self.clock() - self._last_quiesce_at >= every)

    def _take(self):
        """The driver's snapshot, quiesced when due; None when a required
        quiesce failed (logged; the next crash-consistent ones go on)."""
        if not self._quiesce_due():
            return self.driver.snapshot(self.vm, wait=30)
        self._last_quiesce_at = self.clock()
        require = bool(self.state.spec.require_quiesce)
        try:
            snap = self.driver.snapshot(self.vm, wait=30, quiesce=True,
                                        require_quiesce=require)
        except exception.QuiesceFailed as e:
            self.quiesce_failures += 1
            self.error = e
            LOG.error('Instance %s: %s', self.instance, e)
            return None
        if snap.consistency == statuses.Consistency.FILESYSTEM:
            self.app_consistent += 1
        return snap

    def _snapshot(self) -> None:
        self._last_snapshot_at = self.clock()
        spec = self.state.spec
        multi = disks_mod.multi_disk(self.conf, spec, self.manager_api)
        # NOTE: asked before the snapshot, not between it and the queueing
        # (see _queue); a disk resized meanwhile is one more re-baseline.
        sizes = {}
        if multi:
            known = self.driver.disks(self.vm)
            sizes = {d.name: d.virtual_size for d in known}
            spec = disks_mod.with_nova_roles(spec, known)
        taken_at = time.time()
        if self.memory.due(self.state.spec):
            # NOTE: with the memory state of the same instant: never
            # quiesced (a guest resumed inside a freeze stays frozen).
            snap, memory = self.memory.take(self.vm, os.path.join(
                self.conf.agent.state_dir, self.instance))
        else:
            snap, memory = self._take(), None
        if snap is None:
            return
        split = disks_mod.split(snap, self._disk_name(), spec, multi)
        if len(split.protected) > 1 and any(
                fo.disk not in sizes for fo, _ in split.protected):
            # NOTE: a disk plugged in since: a change of disks anyway.
            sizes = {d.name: d.virtual_size
                     for d in self.driver.disks(self.vm)}
        if split.protected and not memory and self._needs_full(
                split.protected, disks_mod.shape_of(split.protected,
                                                    sizes)):
            # NOTE: a change of disks sends them whole; a driver whose
            # frozen images hold the changed blocks alone (libvirt) takes
            # a full snapshot instead, once.
            LOG.info('Instance %s: protected disks now %s (were %s): '
                     'taking a full snapshot', self.instance,
                     disks_mod.shape_of(split.protected, sizes),
                     self.state.layout or 'the root only')
            self.driver.full_next(self.vm, snap)
            taken_at = time.time()
            snap = self._take()
            if snap is None:
                return
            split = disks_mod.split(snap, self._disk_name(), spec, multi)
        if split.protected:
            self._queue(split.protected,
                        disks_mod.shape_of(split.protected, sizes), snap,
                        taken_at, memory)
        elif memory:
            memory_state.remove_spool(memory)
        self.save()
        self.queue.shippable.set()
        for fo in split.others:
            # NOTE: not protected (another disk than the root, with an
            # older manager or [agent] multi_disk off; a swap disk): kept
            # short (committed at once), not shipped. After the queueing:
            # the shipper may commit the previous overlay of a queued disk
            # meanwhile, and it fixes the backing of the entries queued.
            self.driver.commit(self.vm, fo, timeout=600)
        LOG.debug('Instance %s: snapshot in %.1f ms', self.instance,
                  snap.qmp_seconds * 1000)

    def _needs_full(self, protected, shape) -> bool:
        """Whether this snapshot's disks would be sent whole (a change of
        disks) by a driver that cannot read them whole from their chains,
        and are not whole already."""
        return (not getattr(self.driver, 'frozen_in_chain', True)
                and shape != self.state.layout
                and not all(disks_mod.is_first(fo) for fo, _ in protected))

    def _queue(self, protected, shape, snap, taken_at, memory):
        """Queue the snapshot of the protected disks (the root first);
        returns ``memory`` or None when it was dropped."""
        with self.lock:
            if all(disks_mod.is_first(fo) for fo, _ in protected) and (
                    self.state.baseline_restore_point):
                # The base is already durable (restored from it).
                self.state.parent = self.state.baseline_restore_point
                self.durable_record.remember(self.state.parent, taken_at,
                                             shipped=False)
                self.state.baseline_restore_point = None
                self.state.layout = shape
                self.durable_record.now(0, 0.0)
                if memory:
                    # NOTE: no new restore point to carry it.
                    memory_state.remove_spool(memory)
                return None
            fields = disks_mod.entry_fields(protected, shape,
                                            self.state.layout)
            if shape != self.state.layout:
                LOG.info('Instance %s: protected disks now %s (were %s): '
                         'this delta sends them whole', self.instance,
                         shape or 'the root only',
                         self.state.layout or 'the root only')
            self.state.layout = shape
            self.queue.add(taken_at=taken_at, consistency=snap.consistency,
                           memory=memory, **fields)
            return memory

    def _adopt_unknown_overlays(self) -> None:
        """Frozen overlays in the chain the state does not know (a crash
        right after a snapshot): send them like any other."""
        disk = self._disk_name()
        with self.lock:
            known = {image['frozen'] for p in self.state.pending
                     for image in p.images()}
            layout = self.state.layout
            targets = [t for t, _r, _s in layout] if layout else [disk]
            groups = disks_mod.adopt_groups([
                [fo for fo in self.driver.frozen_images(self.vm, target)
                 if fo.frozen.path not in known] for target in targets])
            for group in groups:
                LOG.warning('Instance %s: adopting frozen overlays %s '
                            'found in the chains', self.instance,
                            ', '.join(fo.frozen.path for fo in group))
                if layout is None:
                    fo = group[0]
                    self.queue.add(
                        disk=disk, frozen=fo.frozen.path,
                        backing=fo.backing.path if fo.backing else None,
                        committable=True, full=fo.full)
                    continue
                protected = [(fo, role) for fo, (_t, role, _s)
                             in zip(group, layout)]
                self.queue.add(**disks_mod.entry_fields(protected, layout,
                                                        layout))
            self.state.pending.sort(key=lambda p: p.sequence)
            self.save()
        self.queue.shippable.set()
