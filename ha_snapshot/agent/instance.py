"""One protected VM's snapshot agent: snapshot, ship, wait for durable, commit.

Two threads per instance. The snapshot loop asks the policy how long to
wait, waits, and snapshots; each snapshot's frozen overlay joins the
pending list. The shipper sends pending deltas oldest first (several parts
of one delta in flight at once, retrying with backoff until the manager's
durable ack), then commits the acknowledged overlay down. Snapshots thus go
on while earlier deltas ship (the interval is not bounded below by the
shipping time), up to ``[agent] max_pending_deltas`` unacknowledged
deltas; commits stay in order. The state file (agent/state.py) is
written at every step, so a killed agent resends what was never
acknowledged and nothing is lost.

May import the delta engine, the hypervisor contract and the RPC clients;
the health monitor lives next door (agent/health.py).
"""

import collections
import concurrent.futures
import threading
import time

from oslo_log import log as logging
import oslo_messaging as messaging

from ha_snapshot import delta as delta_mod
from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.image import qemu
from ha_snapshot.agent import state as state_mod
from ha_snapshot.policy import metrics

LOG = logging.getLogger(__name__)

# NOTE: worth retrying: the bus, the manager, its store. A delta the
# manager refuses as invalid is not: it would be refused again.
TRANSIENT = (messaging.MessagingTimeout, messaging.MessageDeliveryFailure,
             messaging.MessagingException, exception.StorageError,
             exception.DatabaseBusy, ConnectionError, TimeoutError)


# NOTE: a part is bounded work for the manager (a few MiB checked and
# spooled): a call that takes longer than this went to a manager that is
# gone (its reply will never come), so it is sent again at once rather
# than after the whole [agent] rpc_timeout.
PART_TIMEOUT = 15
# NOTE: likewise for a commit: its chunks were stored while the parts
# arrived, so it is short; one that runs longer is asked again and the
# manager answers "still merging" (MergeInProgress, retried) or the ack.
COMMIT_TIMEOUT = 20
# NOTE: a delta with more parts than the manager takes ([manager]
# max_delta_parts) is kept and sent again after this long (the operator
# may raise the limit), not every [agent] retry_max: each try sends up to
# that many parts.
TOO_MANY_PARTS_WAIT = 600


# NOTE: the latest restore points an agent remembers (ids and snapshot
# times, for the demo, benchmarks and operators): a window, not a history,
# so that days of deltas cost no memory.
RECENT_RESTORE_POINTS = 64

# NOTE: raised from deep in a wait; every loop catches it first.
Stopped = exception.AgentStopped


class SnapshotAgent(threading.Thread):

    def __init__(self, conf, driver, manager_api, state, policy, host: str,
                 reporter=None, sampler=None, app_metrics=None,
                 clock=time.monotonic):
        super().__init__(name='snap-%s' % state.instance[:8], daemon=True)
        self.conf = conf
        self.driver = driver
        self.manager_api = manager_api
        self.state = state
        self.policy = policy
        self.host = host
        self.reporter = reporter
        self.sampler = sampler
        self.app_metrics = app_metrics
        self.clock = clock
        self.vm = None
        self._stopping = threading.Event()
        self._now_event = threading.Event()
        self.lock = threading.RLock()
        """Guards the state (pending list, parent, sequence) and its file:
        the snapshot loop and the shipper both change it."""
        self._shippable = threading.Event()
        self._progress = threading.Condition(self.lock)
        self._shipper = None
        self.failed = threading.Event()
        self.durable = threading.Condition()
        self.last_durable_at = None
        self.last_delta_bytes = 0
        self.last_ship_seconds = 0.0
        self.shipped_bytes = 0
        self.shipped_changed_bytes = 0
        self.restore_points = collections.deque(
            maxlen=RECENT_RESTORE_POINTS)
        """The latest restore points made durable, oldest first (read
        them under ``durable``)."""
        self.taken_at = {}
        """Restore point id -> wall-clock time of its snapshot, for the
        latest RECENT_RESTORE_POINTS (read it under ``durable``)."""
        self.durable_count = 0
        """Deltas made durable since the agent started."""
        self._write_meter = metrics.WriteRateMeter()
        self._last_snapshot_at = None
        self.error = None

    @property
    def instance(self) -> str:
        return self.state.instance

    def save(self) -> None:
        with self.lock:
            self.state.save(self.conf.agent.state_dir)

    # --- control ------------------------------------------------------------

    def stop(self, timeout: float | None = 30) -> None:
        self._stopping.set()
        self._now_event.set()
        self._shippable.set()
        with self._progress:
            self._progress.notify_all()
        me = threading.current_thread()
        if self.is_alive() and me is not self:
            self.join(timeout)
        shipper = self._shipper
        if shipper is not None and shipper.is_alive() and me is not shipper:
            shipper.join(timeout)

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
        with self._progress:
            self._progress.notify_all()

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
                                     log_path=spec.log_path)
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
        if self.vm is None:
            self._attach()
        self._register()
        self._adopt_unknown_overlays()
        if self._shipper is None:
            self._shipper = threading.Thread(
                target=self._ship_loop, daemon=True,
                name='ship-%s' % self.instance[:8])
            self._shipper.start()
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

    def _unacknowledged(self) -> int:
        return sum(1 for p in self.state.pending if p.restore_point is None)

    def _wait_for_room(self) -> None:
        """Block while [agent] max_pending_deltas deltas wait for their
        ack: a manager that is away must not grow the VM's chain (and its
        I/O path) without bound."""
        limit = self.conf.agent.max_pending_deltas
        with self._progress:
            if self._unacknowledged() >= limit:
                LOG.info('Instance %s: %d deltas wait for the manager; the '
                         'next snapshot waits for one of them',
                         self.instance, self._unacknowledged())
            while (self._unacknowledged() >= limit
                   and not self._stopping.is_set()
                   and not self.failed.is_set()):
                self._progress.wait(1.0)
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

    def _snapshot(self) -> None:
        self._last_snapshot_at = self.clock()
        taken_at = time.time()
        snap = self.driver.snapshot(self.vm, wait=30)
        disk = self._disk_name()
        for fo in snap.disks:
            if fo.disk != disk:
                # NOTE: one recovery image per instance: other disks are
                # kept short (committed at once), not shipped.
                self.driver.commit(self.vm, fo, timeout=600)
                continue
            first = fo.full or (not fo.committable and fo.backing is None)
            with self.lock:
                if first and self.state.baseline_restore_point:
                    # The base is already durable (restored from it).
                    self.state.parent = self.state.baseline_restore_point
                    self._remember(self.state.parent, taken_at,
                                   shipped=False)
                    self.state.baseline_restore_point = None
                    self._durable_now(0, 0.0)
                    continue
                self.state.pending.append(state_mod.Pending(
                    sequence=self.state.next_sequence, disk=fo.disk,
                    frozen=fo.frozen.path,
                    backing=fo.backing.path if fo.backing else None,
                    committable=fo.committable, taken_at=taken_at,
                    full=first))
                self.state.next_sequence += 1
        self.save()
        self._shippable.set()
        LOG.debug('Instance %s: snapshot in %.1f ms', self.instance,
                  snap.qmp_seconds * 1000)

    def _adopt_unknown_overlays(self) -> None:
        """Frozen overlays in the chain the state does not know (a crash
        right after a snapshot): send them like any other."""
        disk = self._disk_name()
        with self.lock:
            known = {p.frozen for p in self.state.pending}
            for fo in self.driver.frozen_images(self.vm, disk):
                if fo.frozen.path in known:
                    continue
                LOG.warning('Instance %s: adopting frozen overlay %s '
                            'found in the chain', self.instance,
                            fo.frozen.path)
                self.state.pending.append(state_mod.Pending(
                    sequence=self.state.next_sequence, disk=disk,
                    frozen=fo.frozen.path,
                    backing=fo.backing.path if fo.backing else None,
                    committable=True, full=fo.full))
                self.state.next_sequence += 1
            self.state.pending.sort(key=lambda p: p.sequence)
            self.save()
        self._shippable.set()

    # --- shipping -----------------------------------------------------------

    def _ship_loop(self) -> None:
        """The shipper thread: pending deltas out, oldest first."""
        delay = self.conf.agent.retry_initial
        while not self._stopping.is_set():
            try:
                if not self.failed.is_set():
                    self._ship_pending()
                delay = self.conf.agent.retry_initial
                self._shippable.wait(1.0)
                self._shippable.clear()
            except Stopped:
                return
            except hv_base.VMNotRunning as e:
                self.mark_failed(str(e))
                return
            except Exception as e:
                # NOTE: as in run(): keep every unacknowledged overlay,
                # learn again what the manager holds, and go on.
                delay = self._back_off(e, delay, 'shipping error; shipping')
                if delay is None:
                    return
                try:
                    self._register()
                except Stopped:
                    return

    def _ship_pending(self) -> None:
        while not self._stopping.is_set() and not self.failed.is_set():
            with self.lock:
                if not self.state.pending:
                    return
                entry = self.state.pending[0]
            if entry.restore_point is None:
                self._ship(entry)
            self._commit(entry)
            with self._progress:
                self.state.pending.remove(entry)
                # NOTE: the overlay above the one committed now stands on
                # what that one stood on (the commit rewrote its header).
                if entry.committable:
                    for later in self.state.pending:
                        if later.backing == entry.frozen:
                            later.backing = entry.backing
                self.save()
                self._progress.notify_all()

    def _ship(self, entry) -> None:
        conf = self.conf
        with self.lock:
            if entry.parent is None:
                entry.parent = self.state.parent
                self.save()
        started = self.clock()
        backing = entry.backing
        if entry.committable:
            # NOTE: an overlay this agent created and only the local QEMU
            # wrote: read by the strict Python qcow2 reader, no qemu-img
            # process (anything it does not handle gets the full
            # inspection); see ha_snapshot/image/inspect.py.
            info = image_inspect.inspect_own_overlay(
                entry.frozen, max_virtual_size=conf.image.max_virtual_size,
                expected_backing=backing,
                limits=qemu.Limits.from_conf(conf))
        else:
            info = image_inspect.inspect(
                entry.frozen, 'qcow2' if backing
                else self._base_format(entry),
                max_virtual_size=conf.image.max_virtual_size,
                allow_backing=backing is not None,
                expected_backing=backing,
                limits=qemu.Limits.from_conf(conf))
        delta = delta_mod.from_image(
            info, instance=self.instance, project=self.state.project,
            sequence=entry.sequence, parent=entry.parent,
            max_part_bytes=conf.image.max_part_bytes,
            max_part_extents=conf.image.max_part_extents,
            compression_level=conf.image.compression_level,
            limits=qemu.Limits.from_conf(conf), full=entry.full)
        while True:
            try:
                sent = self._send_parts(entry, delta)
                break
            except exception.DeltaTooManyParts as e:
                LOG.error('Instance %s: %s; delta %d is kept and sent again '
                          'in %d s', self.instance, e, entry.sequence,
                          TOO_MANY_PARTS_WAIT)
                if self._stopping.wait(TOO_MANY_PARTS_WAIT):
                    raise Stopped()
        try:
            ack = self._retry('commit of delta %d' % entry.sequence,
                              self.manager_api.commit_delta,
                              delta.to_header_primitive(),
                              timeout=min(self.conf.agent.rpc_timeout,
                                          COMMIT_TIMEOUT))
        except exception.PartsMissing as e:
            # NOTE: the manager lost its spool (restarted on a new disk,
            # or a part file torn by a crash): send the parts again.
            LOG.warning('Instance %s: %s; sending again', self.instance,
                        str(e).splitlines()[0])
            return self._ship(entry)
        with self.lock:
            entry.restore_point = ack['restore_point']
            self.state.parent = ack['restore_point']
            self.save()
        self.shipped_bytes += sent
        self.shipped_changed_bytes += delta.header.changed_bytes
        self._remember(ack['restore_point'], entry.taken_at)
        # NOTE: the shipping time alone (not the wait behind earlier
        # deltas): the policy derives the shipping throughput from it, and
        # its intervals keep each delta's shipping shorter than the
        # interval, so deltas do not queue.
        self._durable_now(sent, self.clock() - started)
        LOG.info('Instance %s: delta %d durable as %s (%d bytes sent)',
                 self.instance, entry.sequence, ack['restore_point'], sent)

    def _send_parts(self, entry, delta) -> int:
        """put_part every part, up to [agent] parts_in_flight at once;
        bytes sent.

        Parts are produced (read, compressed, checksummed) here, one ahead
        of the window at most, so memory stays bounded by the window.
        """
        def put(part):
            prim = part.to_primitive()
            what = 'part %d of delta %d' % (part.index, entry.sequence)
            self._retry(what, self.manager_api.put_part, self.instance,
                        entry.sequence, prim, timeout=self._part_timeout())
            return len(part.payload)

        if delta.header.part_count <= 1:
            return sum(put(part) for part in delta.parts())
        return send_parts(delta.parts(), put, self.conf.agent.parts_in_flight,
                          'put-%s' % self.instance[:8])

    def _part_timeout(self) -> float:
        return min(self.conf.agent.rpc_timeout, PART_TIMEOUT)

    def _remember(self, restore_point: str, taken_at: float | None,
                  shipped: bool = True) -> None:
        with self.durable:
            self.taken_at[restore_point] = taken_at
            while len(self.taken_at) > RECENT_RESTORE_POINTS:
                del self.taken_at[next(iter(self.taken_at))]
            if shipped:
                self.restore_points.append(restore_point)
                self.durable_count += 1

    def _durable_now(self, sent: int, seconds: float) -> None:
        with self.durable:
            self.last_durable_at = self.clock()
            self.last_delta_bytes = sent
            self.last_ship_seconds = seconds
            self.durable.notify_all()

    def _base_format(self, entry) -> str:
        for d in self.driver.disks(self.vm):
            for img in d.chain:
                if img.path == entry.frozen:
                    return img.format
        return 'qcow2'

    def _commit(self, entry) -> None:
        if not entry.committable:
            return
        # NOTE: not among the frozen images: already committed (a crash
        # after the commit).
        for fo in self.driver.frozen_images(self.vm, entry.disk):
            if fo.frozen.path == entry.frozen:
                self.driver.commit(self.vm, fo, timeout=600)


def send_parts(parts, put, window: int, name: str = 'put') -> int:
    """``put(part)`` for every part, up to ``window`` calls at once, the
    parts taken from the iterator only as room frees up (one ahead of the
    window at most: memory stays bounded). Returns the sum of what the
    calls returned; the first error is raised once the calls under way
    have ended, and the parts not yet sent are not sent."""
    total = 0
    inflight = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=window,
                                                 thread_name_prefix=name)
    try:
        for part in parts:
            while len(inflight) >= window:
                total += inflight.popleft().result()
            inflight.append(pool.submit(put, part))
        while inflight:
            total += inflight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return total
