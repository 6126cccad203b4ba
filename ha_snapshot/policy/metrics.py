"""The figures a snapshot policy decides from, and where they come from.

* :class:`Figures`: one cycle's figures, as the agent hands them over.
* :class:`WriteRateMeter`: an instance's write rate from its cumulative
  block statistics (libvirt ``wr_bytes``, QMP ``query-blockstats``).
* :class:`HostSampler`: host CPU, I/O wait, disk and load, and our own
  part of them, from psutil, as deltas over a short window of calls (it
  never sleeps to measure).
* :class:`AppMetrics`: optional application figures from plugins in the
  ``ha_snapshot.policy.app_metrics`` namespace.

May import psutil, stevedore and oslo.log; nothing of ha_snapshot.
"""

import collections
import collections.abc
import dataclasses
import functools
import math
import numbers
import os
import time
from typing import Callable, Iterable

from oslo_log import log as logging
import psutil
from stevedore import extension

LOG = logging.getLogger(__name__)

APP_METRICS_NAMESPACE = 'ha_snapshot.policy.app_metrics'


@dataclasses.dataclass(frozen=True)
class Figures:
    """What the agent knows about one instance when it asks the policy.

    Times are ``time.monotonic()`` seconds; rates are bytes per second.
    ``None`` means "not measured yet" (the first cycles of an instance).
    """

    #: When the figures were taken.
    now: float
    #: The instance's recent write rate, from block statistics deltas.
    write_rate_bps: float | None = None
    #: Size of the latest delta shipped (bytes of changed ranges).
    last_delta_bytes: int | None = None
    #: From the latest snapshot to the durable ack of its delta.
    last_ship_seconds: float | None = None
    #: When the newest restore point became durable.
    last_durable_at: float | None = None
    host_cpu_percent: float = 0.0
    host_iowait_percent: float = 0.0
    #: Our part of the host's CPU time (the agent process and its reaped
    #: children, such as qemu-img), percent of all CPUs; None: unknown.
    host_own_cpu_percent: float | None = None
    #: Our part of the host's disk traffic (bytes read and written by the
    #: agent process and its reaped children), percent; None: unknown.
    host_own_io_percent: float | None = None
    #: The time the host figures were averaged over.
    host_window_seconds: float | None = None
    #: The host sampler's verdict on run queue and disk saturation.
    host_load_ok: bool = True
    #: Numbers from the application metrics plugins, "plugin.key" -> value.
    app_figures: dict = dataclasses.field(default_factory=dict)

    def as_inputs(self) -> dict:
        """A flat dict of the figures, for a decision's inputs."""
        inputs = {f.name: getattr(self, f.name)
                  for f in dataclasses.fields(self) if f.name != 'app_figures'}
        inputs.update(('app.%s' % k, v) for k, v in self.app_figures.items())
        return inputs


class WriteRateMeter:
    """An instance's write rate from its cumulative written-bytes counter."""

    def __init__(self):
        self._last = None

    def update(self, written_bytes: int, now: float) -> float | None:
        """Bytes per second since the previous update, or None.

        None on the first update and after the counter went backwards (the
        QEMU process restarted and counts from zero again).
        """
        last, self._last = self._last, (written_bytes, now)
        if last is None or written_bytes < last[0] or now <= last[1]:
            return None
        return (written_bytes - last[0]) / (now - last[1])


@dataclasses.dataclass(frozen=True)
class HostSample:
    """Host figures over a window of recent :meth:`HostSampler.sample`."""

    #: CPU time neither idle nor waiting for I/O, percent of all CPUs.
    cpu_percent: float
    iowait_percent: float
    #: One-minute load average divided by the number of CPUs.
    load_per_cpu: float
    disk_read_bps: float
    disk_write_bps: float
    #: Busiest disk's share of time with I/O in flight; None if unknown.
    disk_busy_percent: float | None
    #: load_per_cpu and disk_busy_percent are under their limits.
    load_ok: bool
    #: Our CPU time (this process and its reaped children), percent of
    #: all CPUs (the scale of cpu_percent); None if unknown.
    own_cpu_percent: float | None = None
    #: Our share of the host's disk bytes (read + written); None if
    #: unknown (no I/O accounting, or no disk traffic at all).
    own_io_percent: float | None = None
    #: Seconds the figures cover (the window, or less at start-up).
    window_seconds: float = 0.0

    def figures(self) -> dict:
        """The host fields of :class:`Figures`: ``Figures(**s.figures())``."""
        return {'host_cpu_percent': self.cpu_percent,
                'host_iowait_percent': self.iowait_percent,
                'host_load_ok': self.load_ok,
                'host_own_cpu_percent': self.own_cpu_percent,
                'host_own_io_percent': self.own_io_percent,
                'host_window_seconds': self.window_seconds}


_Reading = collections.namedtuple(
    '_Reading', 'clock cpu disk_total disks own_cpu own_io')


class HostSampler:
    """Samples the host without blocking, averaged over a short window.

    Each :meth:`sample` is the difference between the counters read now
    and the oldest reading kept that is at least ``window`` seconds old
    (or the previous one, whichever is newer): one busy second does not
    make an overload, and a window of 0 compares with the previous call
    only. The first sample covers the time since the sampler was built.

    Besides the host totals it reads our own share: the CPU and disk
    bytes of ``own_process`` (default: this process) and of its children
    once reaped (qemu-img runs), which is what snapshotting less often
    can give back to the host.

    psutil's own ``cpu_times_percent(interval=None)`` keeps one baseline
    per process, which any other caller resets; this class keeps its own.
    The psutil functions and the clock can be replaced (tests).
    """

    def __init__(self, load_per_cpu_high: float = 2.0,
                 disk_busy_high: float = 95.0,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_times: Callable = psutil.cpu_times,
                 disk_io: Callable = psutil.disk_io_counters,
                 loadavg: Callable = os.getloadavg,
                 cpu_count: int | None = None,
                 window: float = 0.0,
                 own_process: psutil.Process | None = None,
                 own_cpu: Callable | None = None,
                 own_io: Callable | None = None):
        self.load_per_cpu_high = load_per_cpu_high
        self.disk_busy_high = disk_busy_high
        self.window = max(float(window), 0.0)
        self._clock = clock
        self._cpu_times = cpu_times
        self._disk_io = disk_io
        self._loadavg = loadavg
        self._cpu_count = cpu_count or psutil.cpu_count() or 1
        if own_cpu is None or own_io is None:
            proc = own_process or psutil.Process()
            own_cpu = own_cpu or functools.partial(_process_cpu, proc)
            own_io = own_io or functools.partial(_process_io, proc)
        self._own_cpu = own_cpu
        self._own_io = own_io
        self._last_sample = None
        self._readings = collections.deque([self._read()])

    def _read(self) -> _Reading:
        try:
            # NOTE: the totals skip partitions (psutil counts whole
            # devices); the busy share is the busiest single device's.
            total = self._disk_io(perdisk=False)
            disks = self._disk_io(perdisk=True) or {}
        except (OSError, RuntimeError):
            # No /proc/diskstats (some containers): no disk figures.
            total, disks = None, {}
        return _Reading(self._clock(), self._cpu_times(), total, disks,
                        self._own_cpu(), self._own_io())

    def sample(self) -> HostSample:
        now = self._read()
        readings = self._readings
        # NOTE: keep the newest reading at least a window old as the base;
        # drop what is older than that.
        while (len(readings) > 1
               and now.clock - readings[1].clock >= self.window):
            readings.popleft()
        base = readings[0]
        elapsed = now.clock - base.clock
        cpu = _cpu_deltas(base.cpu, now.cpu)
        if cpu is None or elapsed <= 0:
            # Two calls within one clock tick: nothing new to say.
            if self._last_sample is None:
                self._last_sample = self._host_sample(
                    (0.0, 0.0, 0.0), 0.0, 0.0, None, None, None, 0.0)
            return self._last_sample
        readings.append(now)
        read = write = 0
        if now.disk_total is not None and base.disk_total is not None:
            read = max(now.disk_total.read_bytes
                       - base.disk_total.read_bytes, 0)
            write = max(now.disk_total.write_bytes
                        - base.disk_total.write_bytes, 0)
        busy = None
        for name, counters in now.disks.items():
            before = base.disks.get(name)
            busy_ms = getattr(counters, 'busy_time', None)
            if before is None or busy_ms is None:
                continue
            share = 100.0 * max(busy_ms - before.busy_time, 0) / (
                elapsed * 1000.0)
            busy = max(busy or 0.0, min(share, 100.0))
        own_cpu = None
        if now.own_cpu is not None and base.own_cpu is not None:
            own_cpu = _percent(max(now.own_cpu - base.own_cpu, 0.0), cpu[2])
        own_io = None
        if (now.own_io is not None and base.own_io is not None
                and read + write > 0):
            own_io = _percent(max(now.own_io - base.own_io, 0),
                              read + write)
        self._last_sample = self._host_sample(cpu, read / elapsed,
                                              write / elapsed, busy,
                                              own_cpu, own_io, elapsed)
        return self._last_sample

    def _host_sample(self, cpu, read_bps, write_bps, busy, own_cpu, own_io,
                     elapsed) -> HostSample:
        load_per_cpu = self._loadavg()[0] / self._cpu_count
        load_ok = (load_per_cpu <= self.load_per_cpu_high and
                   (busy is None or busy < self.disk_busy_high))
        return HostSample(
            cpu_percent=cpu[0], iowait_percent=cpu[1],
            load_per_cpu=load_per_cpu, disk_read_bps=read_bps,
            disk_write_bps=write_bps, disk_busy_percent=busy,
            load_ok=load_ok, own_cpu_percent=own_cpu,
            own_io_percent=own_io, window_seconds=elapsed)


def _process_cpu(proc) -> float | None:
    """CPU seconds of ``proc`` and of its children it has waited for."""
    try:
        t = proc.cpu_times()
    except (psutil.Error, OSError):
        return None
    return (t.user + t.system + getattr(t, 'children_user', 0.0)
            + getattr(t, 'children_system', 0.0))


def _process_io(proc) -> int | None:
    """Disk bytes of ``proc`` (Linux counts reaped children in)."""
    try:
        io = proc.io_counters()
    except (psutil.Error, OSError, AttributeError, NotImplementedError):
        return None
    return io.read_bytes + io.write_bytes


def _cpu_deltas(before, after) -> tuple[float, float, float] | None:
    """(busy %, iowait %, CPU seconds spent in all) between two
    psutil.cpu_times() readings."""
    def total(t):
        # NOTE: on Linux guest time is already counted in user and nice.
        return (sum(t) - getattr(t, 'guest', 0.0)
                - getattr(t, 'guest_nice', 0.0))

    spent = total(after) - total(before)
    if spent <= 0:
        return None
    idle = after.idle - before.idle
    iowait = getattr(after, 'iowait', 0.0) - getattr(before, 'iowait', 0.0)
    busy = spent - idle - iowait
    return (_percent(busy, spent), _percent(iowait, spent), spent)


def _percent(part: float, whole: float) -> float:
    return min(max(100.0 * part / whole, 0.0), 100.0)


class AppMetrics:
    """Application figures from plugins; a failing plugin is ignored.

    A plugin is a callable ``plugin(instance_uuid) -> {name: number}``
    (e.g. a guest agent's queue length or a database's dirty pages),
    registered in the ``ha_snapshot.policy.app_metrics`` namespace. It is
    called at every decision, in the agent's thread: it must be quick.
    """

    def __init__(self, plugins: Iterable[tuple[str, Callable]] = ()):
        self.plugins = list(plugins)

    @classmethod
    def from_entry_points(cls, names: Iterable[str] | None = None):
        """The installed plugins (only ``names``, if given)."""
        def on_load_failure(_manager, entrypoint, exc):
            LOG.warning('Application metrics plugin %(name)s (%(target)s) '
                        'failed to import and is ignored: %(exc)s',
                        {'name': entrypoint.name,
                         'target': entrypoint.value, 'exc': exc})

        manager = extension.ExtensionManager(
            APP_METRICS_NAMESPACE, invoke_on_load=False,
            on_load_failure_callback=on_load_failure)
        wanted = None if names is None else set(names)
        return cls((ext.name, ext.plugin) for ext in manager
                   if wanted is None or ext.name in wanted)

    def collect(self, instance_uuid: str) -> dict:
        """``{"plugin.key": float}`` from every plugin that answers."""
        figures = {}
        for name, plugin in self.plugins:
            try:
                values = plugin(instance_uuid)
            except Exception:
                LOG.warning('Application metrics plugin %(name)s failed for '
                            'instance %(instance)s and is ignored',
                            {'name': name, 'instance': instance_uuid},
                            exc_info=True)
                continue
            if not isinstance(values, collections.abc.Mapping):
                LOG.warning('Application metrics plugin %(name)s returned '
                            '%(type)s, not a dict of numbers: ignored',
                            {'name': name, 'type': type(values).__name__})
                continue
            for key, value in values.items():
                if (isinstance(value, bool)
                        or not isinstance(value, numbers.Real)
                        or not math.isfinite(value)):
                    LOG.warning('Application metrics plugin %(name)s: '
                                '%(key)s=%(value)r is not a finite number: '
                                'ignored', {'name': name, 'key': key,
                                            'value': value})
                    continue
                figures['%s.%s' % (name, key)] = float(value)
        return figures
