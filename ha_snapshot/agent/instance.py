"""One protected VM's snapshot agent: snapshot, ship, wait for durable, commit.

A thread per instance. Each cycle: ship whatever is pending (oldest first,
part by part, retrying with backoff until the manager's durable ack),
commit the acknowledged overlay down, ask the policy how long to wait,
wait, snapshot. The state file (agent/state.py) is written at every step,
so a killed agent resends what was never acknowledged and nothing is lost.

May import the delta engine, the hypervisor contract and the RPC clients;
the health monitor lives next door (agent/health.py).
"""

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
             ConnectionError, TimeoutError)


class Stopped(Exception):
    """The agent was asked to stop while waiting."""


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
        self.failed = threading.Event()
        self.durable = threading.Condition()
        self.last_durable_at = None
        self.last_delta_bytes = 0
        self.last_ship_seconds = 0.0
        self.shipped_bytes = 0
        self.shipped_changed_bytes = 0
        self.restore_points = []
        self.taken_at = {}
        """Restore point id -> wall-clock time of its snapshot."""
        self._write_meter = metrics.WriteRateMeter()
        self._last_snapshot_at = None
        self.error = None

    @property
    def instance(self) -> str:
        return self.state.instance

    def save(self) -> None:
        self.state.save(self.conf.agent.state_dir)

    # --- control ------------------------------------------------------------

    def stop(self, timeout: float | None = 30) -> None:
        self._stopping.set()
        self._now_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

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
                self.error = e
                LOG.exception('Instance %s: snapshot agent error; the loop '
                              'starts again in %.1f s', self.instance, delay)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, self.conf.agent.retry_max)

    def _attach(self):
        spec = self.state.spec
        # NOTE: a libvirt domain is found by its name or uuid alone.
        self.vm = self.driver.attach(spec.get('domain') or spec['name'],
                                     spec.get('qmp_path'), spec.get('pid'),
                                     log_path=spec.get('log_path'))
        return self.vm

    def _register(self) -> None:
        reg = self._retry('registration', self.manager_api.register_instance,
                          self.instance, self.state.project, self.host,
                          self.state.spec.get('driver')
                          or self.conf.agent.hypervisor,
                          {'disk': self.state.spec.get('disk')})
        newest, last = reg['newest_restore_point'], reg['last_sequence']
        self.state.next_sequence = max(self.state.next_sequence, last + 1)
        if not self.state.pending or all(p.restore_point
                                         for p in self.state.pending):
            self.state.parent = newest
        self.save()

    def _run(self) -> None:
        if self.vm is None:
            self._attach()
        self._register()
        self._adopt_unknown_overlays()
        while not self._stopping.is_set():
            if self.failed.is_set():
                self._wait(3600)
                continue
            self._ship_pending()
            decision = self._decide()
            # NOTE: the policy's interval runs from the latest snapshot;
            # the first one (the baseline) is taken at once.
            if self._last_snapshot_at is not None:
                self._wait(decision.interval_seconds
                           - (self.clock() - self._last_snapshot_at))
            if self.failed.is_set():
                continue
            self._snapshot()

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
        name = self.state.spec.get('disk')
        if name:
            return name
        disks = self.driver.disks(self.vm)
        if not disks:
            raise hv_base.DiskNotFound(vm=self.instance, disk='any',
                                       known='none')
        self.state.spec['disk'] = disks[0].name
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
            if first and self.state.baseline_restore_point:
                # The base is already durable (restored from it).
                self.state.parent = self.state.baseline_restore_point
                self.taken_at[self.state.parent] = taken_at
                self.state.baseline_restore_point = None
                self._durable_now(0, 0.0)
                continue
            self.state.pending.append(state_mod.Pending(
                sequence=self.state.next_sequence, disk=fo.disk,
                frozen=fo.frozen.path,
                backing=fo.backing.path if fo.backing else None,
                committable=fo.committable, taken_at=taken_at, full=first))
            self.state.next_sequence += 1
        self.save()
        LOG.debug('Instance %s: snapshot in %.1f ms', self.instance,
                  snap.qmp_seconds * 1000)

    def _adopt_unknown_overlays(self) -> None:
        """Frozen overlays in the chain the state does not know (a crash
        right after a snapshot): send them like any other."""
        known = {p.frozen for p in self.state.pending}
        disk = self._disk_name()
        for fo in self.driver.frozen_images(self.vm, disk):
            if fo.frozen.path in known:
                continue
            LOG.warning('Instance %s: adopting frozen overlay %s found '
                        'in the chain', self.instance, fo.frozen.path)
            self.state.pending.append(state_mod.Pending(
                sequence=self.state.next_sequence, disk=disk,
                frozen=fo.frozen.path,
                backing=fo.backing.path if fo.backing else None,
                committable=True, full=fo.full))
            self.state.next_sequence += 1
        self.state.pending.sort(key=lambda p: p.sequence)
        self.save()

    # --- shipping -----------------------------------------------------------

    def _ship_pending(self) -> None:
        while self.state.pending and not self._stopping.is_set():
            entry = self.state.pending[0]
            if entry.restore_point is None:
                self._ship(entry)
            self._commit(entry)
            self.state.pending.pop(0)
            self.save()

    def _ship(self, entry) -> None:
        conf = self.conf
        if entry.parent is None:
            entry.parent = self.state.parent
            self.save()
        started = self.clock()
        info = image_inspect.inspect(
            entry.frozen, 'qcow2' if entry.backing or entry.committable
            else self._base_format(entry),
            max_virtual_size=conf.image.max_virtual_size,
            allow_backing=entry.backing is not None,
            expected_backing=entry.backing,
            limits=qemu.Limits.from_conf(conf))
        delta = delta_mod.from_image(
            info, instance=self.instance, project=self.state.project,
            sequence=entry.sequence, parent=entry.parent,
            max_part_bytes=conf.image.max_part_bytes,
            max_part_extents=conf.image.max_part_extents,
            compression_level=conf.image.compression_level,
            limits=qemu.Limits.from_conf(conf), full=entry.full)
        sent = 0
        for part in delta.parts():
            prim = part.to_primitive()
            self._retry('part %d of delta %d' % (part.index, entry.sequence),
                        self.manager_api.put_part, self.instance,
                        entry.sequence, prim)
            sent += len(part.payload)
        try:
            ack = self._retry('commit of delta %d' % entry.sequence,
                              self.manager_api.commit_delta,
                              delta.to_header_primitive())
        except exception.InvalidDelta as e:
            if 'never received' not in str(e):
                raise
            # NOTE: the manager lost its spool (restarted on a new disk):
            # send the parts again.
            LOG.warning('Instance %s: %s; sending again', self.instance, e)
            return self._ship(entry)
        entry.restore_point = ack['restore_point']
        self.state.parent = ack['restore_point']
        self.save()
        self.shipped_bytes += sent
        self.shipped_changed_bytes += delta.header.changed_bytes
        self.restore_points.append(ack['restore_point'])
        self.taken_at[ack['restore_point']] = entry.taken_at
        self._durable_now(sent, self.clock() - started)
        LOG.info('Instance %s: delta %d durable as %s (%d bytes sent)',
                 self.instance, entry.sequence, ack['restore_point'], sent)

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
