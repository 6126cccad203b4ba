"""Processes of the harness: started, recorded by pid, waited for, stopped.

Every process the harness starts gets a pid file ``pids/NAME.pid`` in the
run directory holding its pid and its start time (as psutil reports it),
so that ``stop`` from another shell signals exactly our processes and
never a recycled pid. Its output goes to ``logs/NAME.log``.

This module may import the standard library and psutil only: it runs in
the harness's own interpreter, and ``stop`` must work even when the rest
of the project does not import.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse

import psutil

from ha_snapshot.tests.fixtures import logs

LOOPBACK = '127.0.0.1'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# How long one service may take to start (a busy 2-core host: minutes).
START_TIMEOUT = float(os.environ.get('HA_SNAPSHOT_CLOUD_START_TIMEOUT', 180))
_POLL = 0.1
TAIL_LINES = 60


class CloudError(Exception):
    """The harness could not install, start, check or stop something."""


def tail(path: str, lines: int = TAIL_LINES) -> str:
    return logs.tail(path, lines)


def wait_for(predicate, timeout: float, what: str, logs=()) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after timeout.

    ``logs``: log files whose tails the error carries, so that the reason
    (a traceback, a refused connection) is right there.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            msg = 'timed out after %.0f s waiting for %s' % (timeout, what)
            for path in logs:
                msg += '\n--- %s ---\n%s' % (path, tail(path))
            raise CloudError(msg)
        time.sleep(_POLL)


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 5.0):
    """The status of a GET of ``url``, or None when nothing answered."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                      timeout=timeout)
    try:
        conn.request('GET', parts.path or '/')
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class ProcessTable:
    """The processes of one run directory, by name."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.pid_dir = os.path.join(run_dir, 'pids')
        self.log_dir = os.path.join(run_dir, 'logs')
        self._popen = {}

    def log_path(self, name: str) -> str:
        return os.path.join(self.log_dir, name + '.log')

    def _pid_path(self, name: str) -> str:
        return os.path.join(self.pid_dir, name + '.pid')

    def spawn(self, name: str, argv: list, env: dict | None = None,
              cwd: str | None = None) -> subprocess.Popen:
        """Start ``argv`` with its output appended to ``logs/NAME.log``."""
        os.makedirs(self.pid_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        with open(self.log_path(name), 'ab') as log:
            log.write(('$ %s\n' % ' '.join(argv)).encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    argv, env=env, cwd=cwd or self.run_dir,
                    stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT)
            except OSError as e:
                raise CloudError('cannot start %s (%s): %s'
                                 % (name, argv[0], e))
        self._popen[name] = proc
        self.record(name, proc.pid)
        return proc

    def record(self, name: str, pid: int) -> None:
        """Remember ``pid`` (a process we started) under ``name``."""
        os.makedirs(self.pid_dir, exist_ok=True)
        try:
            created = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            raise CloudError('%s (pid %d) exited at once; see %s'
                             % (name, pid, self.log_path(name)))
        tmp = self._pid_path(name) + '.tmp'
        with open(tmp, 'w') as f:
            json.dump({'pid': pid, 'created': created}, f)
        os.replace(tmp, self._pid_path(name))

    def process(self, name: str):
        """The live psutil.Process recorded as ``name``, or None."""
        try:
            with open(self._pid_path(name)) as f:
                rec = json.load(f)
            proc = psutil.Process(rec['pid'])
            if abs(proc.create_time() - rec['created']) > 0.01:
                return None  # NOTE: a recycled pid, not ours
        except (OSError, ValueError, KeyError, psutil.NoSuchProcess):
            return None
        return proc if _alive(proc) else None

    def names(self) -> list:
        try:
            return sorted(n[:-4] for n in os.listdir(self.pid_dir)
                          if n.endswith('.pid'))
        except FileNotFoundError:
            return []

    def check_running(self, name: str) -> None:
        """Fail with the log's tail when ``name`` is no longer running."""
        if self.process(name) is None:
            raise CloudError('%s is not running; the end of its log %s:\n%s'
                             % (name, self.log_path(name),
                                tail(self.log_path(name))))

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """SIGTERM ``name`` and its children; SIGKILL what outlives it."""
        proc = self.process(name)
        if proc is not None:
            try:
                family = [proc] + proc.children(recursive=True)
            except psutil.NoSuchProcess:
                family = [proc]
            for p in family:
                try:
                    p.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
            _gone, alive = psutil.wait_procs(family, timeout=timeout)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=10)
        popen = self._popen.pop(name, None)
        if popen is not None:
            popen.poll()  # NOTE: reap our child, no zombie left
        try:
            os.unlink(self._pid_path(name))
        except FileNotFoundError:
            pass
