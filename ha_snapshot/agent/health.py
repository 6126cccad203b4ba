"""Watch one VM's health and report abnormal behaviour to the manager.

Three sources, each reported once per incident with its reason:

* lifecycle events from the hypervisor driver: the QEMU process exiting,
  the monitor closing, a guest SHUTDOWN or STOP the agent did not cause
  (the driver marks its own: ``data['ha_snapshot']``),
  a BLOCK_IO_ERROR;
* periodic checks: the process and its monitor (``driver.is_alive``) and,
  where the VM has a guest agent socket, a ``guest-ping`` with a timeout
  (counted once the agent has answered: a booting guest has none yet);
  ``[agent] health_failures`` checks in a row must fail;
* anomaly plugins (stevedore ``ha_snapshot.health.anomaly``): callables
  given the instance and its latest figures, returning a reason or None.
"""

import json
import socket
import threading
import time

from oslo_log import log as logging
from stevedore import extension

from ha_snapshot import exception
from ha_snapshot.hypervisor import guest_agent
from ha_snapshot.hypervisor import base as hv_base

LOG = logging.getLogger(__name__)

ANOMALY_NAMESPACE = 'ha_snapshot.health.anomaly'
ABNORMAL_EVENTS = {
    hv_base.PROCESS_EXITED: 'QEMU process exited',
    hv_base.MONITOR_CLOSED: 'QMP monitor closed',
    'SHUTDOWN': 'guest shut down unexpectedly',
    'STOP': 'VM stopped unexpectedly',
    'BLOCK_IO_ERROR': 'disk I/O error',
    'GUEST_PANICKED': 'guest kernel panic',
}


def guest_ping(path: str, timeout: float) -> bool:
    """One qemu-guest-agent ``guest-ping`` over its unix socket. QEMU
    serves one client at a time: while a quiesce holds the socket (its
    own bounded exchange), the agent counts as answering."""
    lock = guest_agent.channel_lock(path)
    if not lock.acquire(timeout=timeout):
        return True
    try:
        return _ping(path, timeout)
    finally:
        lock.release()


def _ping(path: str, timeout: float) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps({'execute': 'guest-ping'}).encode() + b'\n')
            buf = b''
            while b'\n' not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
            return 'return' in json.loads(buf.split(b'\n', 1)[0])
    except (OSError, ValueError):
        return False


class HealthMonitor(threading.Thread):

    def __init__(self, conf, driver, vm, instance: str, report,
                 figures=None, qga_path: str | None = None,
                 clock=time.monotonic):
        super().__init__(name='health-%s' % instance[:8], daemon=True)
        self.conf = conf
        self.driver = driver
        self.vm = vm
        self.instance = instance
        self.report_cb = report
        self.figures = figures
        self.qga_path = qga_path
        self.clock = clock
        self.expected_exit = False
        self.reported = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sub = None
        self._anomaly = None
        self.start_deadline = None
        """Set (a ``clock()`` value) when the VM was re-baselined while
        stopped: checks begin once it runs; not running by then is
        reported."""

    def start(self):
        self._sub = self.driver.subscribe(self.vm, self._on_event)
        try:
            self._anomaly = extension.ExtensionManager(ANOMALY_NAMESPACE,
                                                       invoke_on_load=False)
        except Exception:  # no plugins installed is fine
            self._anomaly = None
        super().start()

    def stop(self) -> None:
        self._stopping.set()
        if self._sub is not None:
            self._sub.cancel()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(10)

    def _report(self, reason: str, details: dict) -> None:
        with self._lock:
            if self.reported is not None or self.expected_exit:
                return
            self.reported = (reason, self.clock())
        LOG.warning('Instance %s is abnormal: %s %s', self.instance, reason,
                    details)
        self.report_cb(self.instance, reason, details)

    def _on_event(self, event) -> None:
        reason = ABNORMAL_EVENTS.get(event.kind)
        if (reason is None or self.start_deadline is not None
                or (event.data or {}).get('ha_snapshot')):
            # NOTE: while a stopped VM waits for its start, Nova's start
            # (undefine, define, start) is no incident; nor is a pause of
            # ours (a memory snapshot's stop).
            return
        if event.kind == 'SHUTDOWN' and (event.data or {}).get('guest') is (
                False):
            reason = 'VM shut down by its host (%s)' % (
                (event.data or {}).get('reason'))
        self._report(reason, {'event': event.kind, 'data': event.data})

    def run(self) -> None:
        failures = {'monitor': 0, 'guest-agent': 0}
        # NOTE: a guest that is still booting has no agent yet: its pings
        # count once the agent has answered (the monitor check covers
        # QEMU meanwhile).
        answered = False
        interval = self.conf.agent.health_interval
        if self.start_deadline is not None and not self._await_start():
            return
        while not self._stopping.wait(interval):
            checks = {'monitor': self._alive}
            if self.qga_path:
                checks['guest-agent'] = lambda: guest_ping(
                    self.qga_path, self.conf.agent.health_timeout)
            for name, check in checks.items():
                ok = check()
                if name == 'guest-agent':
                    answered = answered or ok
                    if not answered:
                        continue
                failures[name] = 0 if ok else failures[name] + 1
                if failures[name] >= self.conf.agent.health_failures:
                    self._report('%s check failed %d times in a row'
                                 % (name, failures[name]), {'check': name})
            self._check_anomalies()

    def _await_start(self) -> bool:
        """Until the VM re-baselined while stopped runs; False when the
        monitor is stopped meanwhile."""
        while not self._alive():
            if self.clock() >= self.start_deadline:
                self.start_deadline = None
                self._report('VM not started within %d s of its re-baseline'
                             % self.conf.agent.rebaseline_start_timeout, {})
                return True
            if self._stopping.wait(self.conf.agent.health_interval):
                return False
        self.start_deadline = None
        return True

    def _alive(self) -> bool:
        try:
            return self.driver.is_alive(self.vm)
        except exception.HaSnapshotException:
            return False

    def _check_anomalies(self) -> None:
        # NOTE: an ExtensionManager with no extensions is still truthy.
        if not self._anomaly or not self._anomaly.extensions or (
                not self.figures):
            return
        figures = self.figures()
        for ext in self._anomaly:
            try:
                reason = ext.plugin(self.instance, figures)
            except Exception:
                LOG.exception('Anomaly plugin %s failed; ignored', ext.name)
                continue
            if reason:
                self._report('anomaly (%s): %s' % (ext.name, reason),
                             {'plugin': ext.name})
