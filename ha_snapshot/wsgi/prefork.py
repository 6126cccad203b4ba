"""Several processes of the embedded server on one listening socket.

One Python process runs Python code on one core at a time: a busy API
(a list of many servers is milliseconds of CPU) needs more than one
process, as every OpenStack API runs several workers. The parent binds
``[api] host``/``port``, forks ``[api] processes`` children that each
build the application and serve the shared socket with their own waitress
(ha_snapshot.wsgi.embedded), and then only watches them: a child that
dies is started again (no faster than once per ``RESPAWN_DELAY`` seconds
per slot, so that a child that cannot start does not fork in a loop);
SIGHUP is passed on; SIGTERM stops every child (each lets its running
requests finish for ``[api] shutdown_timeout`` seconds) and a child still
there ``STOP_GRACE`` seconds later is killed. A child whose parent is
gone (SIGKILL) stops by itself within ``PARENT_CHECK`` seconds.

The parent starts no thread and opens no database or broker connection
before it forks: the children make their own.

May import oslo libraries and the standard library.
"""

import errno
import os
import signal
import socket
import threading
import time
from typing import Callable

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

RESPAWN_DELAY = 1.0
STOP_GRACE = 5.0
PARENT_CHECK = 1.0
BACKLOG = 1024


def worker_count(conf) -> int:
    """``[api] processes``, or the CPUs this process may run on."""
    if conf.api.processes:
        return conf.api.processes
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (IPv4 or IPv6)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                              flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], info[1], info[2])
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(BACKLOG)
        # NOTE: every child polls it; the losers of a race for a connection
        # must not block in accept().
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Prefork:
    """The parent of ``processes`` children, each ``child(sock)``: a
    function that serves the socket until SIGTERM and returns an exit
    status."""

    def __init__(self, sock: socket.socket, processes: int,
                 child: Callable[[socket.socket], int],
                 shutdown_timeout: float = 5.0):
        self.sock = sock
        self.processes = processes
        self.child = child
        self.shutdown_timeout = shutdown_timeout
        self.children: dict[int, int] = {}  # pid -> slot
        self._started: dict[int, float] = {}  # slot -> monotonic start
        self._wake = threading.Event()
        self._signals: list[int] = []

    def _handler(self, signum, _frame):
        self._signals.append(signum)
        self._wake.set()

    def _spawn(self, slot: int) -> None:
        self._started[slot] = time.monotonic()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                               signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                _stop_with_parent(parent)
                status = self.child(self.sock)
            except BaseException:
                LOG.exception('API process %d (slot %d) failed', os.getpid(),
                              slot)
            finally:
                # NOTE: never back into the parent's code (atexit, finally
                # blocks of the caller) in a child.
                os._exit(status or 0)
        self.children[pid] = slot
        LOG.info('Started API process %d (%d of %d)', pid, slot + 1,
                 self.processes)

    def _reap(self) -> list[int]:
        """Slots whose child exited."""
        freed = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            LOG.error('API process %d exited (%s); starting another', pid,
                      _describe(status))
            freed.append(slot)
        return freed

    def run(self) -> int:
        previous = {s: signal.signal(s, self._handler)
                    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                              signal.SIGCHLD)}
        try:
            for slot in range(self.processes):
                self._spawn(slot)
            waiting = []
            while True:
                self._wake.wait(RESPAWN_DELAY)
                self._wake.clear()
                while self._signals:
                    signum = self._signals.pop(0)
                    if signum == signal.SIGHUP:
                        LOG.info('SIGHUP: passed on to the API processes')
                        self._signal_children(signal.SIGHUP)
                    elif signum in (signal.SIGTERM, signal.SIGINT):
                        LOG.info('Signal %d: stopping %d API processes',
                                 signum, len(self.children))
                        self.stop()
                        return 0
                waiting.extend(self._reap())
                now = time.monotonic()
                for slot in list(waiting):
                    if now - self._started.get(slot, 0) >= RESPAWN_DELAY:
                        waiting.remove(slot)
                        self._spawn(slot)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.sock.close()

    def _signal_children(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                self.children.pop(pid, None)

    def stop(self) -> None:
        """SIGTERM to every child; SIGKILL to those still running after
        ``shutdown_timeout`` + ``STOP_GRACE`` seconds."""
        self._signal_children(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid:
                self.children.pop(pid, None)
            else:
                self._wake.wait(0.05)
                self._wake.clear()
        if self.children:
            LOG.warning('API processes %s still running after %.0f s: '
                        'killed', sorted(self.children),
                        self.shutdown_timeout + STOP_GRACE)
            self._signal_children(signal.SIGKILL)
            for pid in list(self.children):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError as e:
                    if e.errno != errno.ECHILD:
                        raise
                self.children.pop(pid, None)


def _stop_with_parent(parent: int) -> None:
    """SIGTERM to this child when its parent is gone (killed by SIGKILL,
    say): an orphan must not go on serving unwatched."""

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK)
        LOG.warning('API process %d: parent %d is gone, stopping',
                    os.getpid(), parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name='parent-watch').start()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return 'signal %d' % os.WTERMSIG(status)
    return 'status %d' % os.waitstatus_to_exitcode(status)
