"""The figures a snapshot policy decides from, and where they come from.

* :class:`Figures`: one cycle's figures, as the agent hands them over.
* :class:`WriteRateMeter`: an instance's write rate from its cumulative
  block statistics (libvirt ``wr_bytes``, QMP ``query-blockstats``).
* :class:`HostSampler`: host CPU, I/O wait, disk and load, from psutil, as
  deltas between two calls (it never sleeps to measure).
* :class:`AppMetrics`: optional application figures from plugins in the
  ``ha_snapshot.policy.app_metrics`` namespace.

May import psutil, stevedore and oslo.log; nothing of ha_snapshot.
"""

import collections.abc
import dataclasses
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
    """Host figures over the time between two :meth:`HostSampler.sample`."""

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

    def figures(self) -> dict:
        """The host fields of :class:`Figures`: ``Figures(**s.figures())``."""
        return {'host_cpu_percent': self.cpu_percent,
                'host_iowait_percent': self.iowait_percent,
                'host_load_ok': self.load_ok}


class HostSampler:
    """Samples the host without blocking: each sample is a delta.

    The first :meth:`sample` covers the time since the sampler was built.
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
                 cpu_count: int | None = None):
        self.load_per_cpu_high = load_per_cpu_high
        self.disk_busy_high = disk_busy_high
        self._clock = clock
        self._cpu_times = cpu_times
        self._disk_io = disk_io
        self._loadavg = loadavg
        self._cpu_count = cpu_count or psutil.cpu_count() or 1
        self._last_sample = None
        self._base = self._read()

    def _read(self):
        try:
            # NOTE: the totals skip partitions (psutil counts whole
            # devices); the busy share is the busiest single device's.
            total = self._disk_io(perdisk=False)
            disks = self._disk_io(perdisk=True) or {}
        except (OSError, RuntimeError):
            # No /proc/diskstats (some containers): no disk figures.
            total, disks = None, {}
        return self._clock(), self._cpu_times(), total, disks

    def sample(self) -> HostSample:
        now = self._read()
        base, self._base = self._base, now
        elapsed = now[0] - base[0]
        cpu = _cpu_deltas(base[1], now[1])
        if cpu is None or elapsed <= 0:
            # Two calls within one clock tick: nothing new to say.
            if self._last_sample is None:
                self._last_sample = self._host_sample((0.0, 0.0), 0.0, 0.0,
                                                      None)
            return self._last_sample
        read = write = 0
        if now[2] is not None and base[2] is not None:
            read = max(now[2].read_bytes - base[2].read_bytes, 0)
            write = max(now[2].write_bytes - base[2].write_bytes, 0)
        busy = None
        for name, counters in now[3].items():
            before = base[3].get(name)
            busy_ms = getattr(counters, 'busy_time', None)
            if before is None or busy_ms is None:
                continue
            share = 100.0 * max(busy_ms - before.busy_time, 0) / (
                elapsed * 1000.0)
            busy = max(busy or 0.0, min(share, 100.0))
        self._last_sample = self._host_sample(cpu, read / elapsed,
                                              write / elapsed, busy)
        return self._last_sample

    def _host_sample(self, cpu, read_bps, write_bps, busy) -> HostSample:
        load_per_cpu = self._loadavg()[0] / self._cpu_count
        load_ok = (load_per_cpu <= self.load_per_cpu_high and
                   (busy is None or busy < self.disk_busy_high))
        return HostSample(
            cpu_percent=cpu[0], iowait_percent=cpu[1],
            load_per_cpu=load_per_cpu, disk_read_bps=read_bps,
            disk_write_bps=write_bps, disk_busy_percent=busy,
            load_ok=load_ok)


def _cpu_deltas(before, after) -> tuple[float, float] | None:
    """(busy %, iowait %) between two psutil.cpu_times() readings."""
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
    return (_percent(busy, spent), _percent(iowait, spent))


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
