"""A guest's serial console, read from QEMU's socket as lines arrive.

Each line is stamped (wall clock and monotonic) when its newline arrives
on the host, so a test knows which records the guest had reported durable
before a given instant (a snapshot command). Readers wait for a line by
pattern with a timeout that names what was awaited; a console that closes
(QEMU exited) ends the wait at once.

:class:`FileConsole` reads the same lines from a file QEMU appends the
console to (a chardev ``file``: what the agent gives a VM it restarts),
polling it every few milliseconds: a line is stamped when it is read, a
little after QEMU wrote it, so what it counts as durable before an instant
is a lower bound, never more than the guest had reported.

May import the standard library and ha_snapshot.exception only.
"""

import dataclasses
import re
import socket
import threading
import time

from ha_snapshot import exception

COUNTER = re.compile(r'(DURABLE|COMMITTED) (\d+)')
COUNTER2 = re.compile(r'DURABLE2 (\d+)')
"""The records of the guest's second data disk (init.sh)."""
CONNECT_RETRY = 0.02
FILE_POLL = 0.01


@dataclasses.dataclass(frozen=True)
class Line:
    wall: float
    monotonic: float
    text: str


class Console:

    def __init__(self, path: str, name: str = 'guest'):
        self.path = path
        self.name = name
        self.lines = []
        self.durable = []
        """(n, wall time the host read ``DURABLE n``), in order."""
        self.durable2 = []
        """(n, wall time the host read ``DURABLE2 n``): the records of a
        second data disk."""
        self.committed = []
        """(n, wall time the host read ``COMMITTED n``): the database's
        transactions."""
        self.closed = False
        self.started = time.time()
        """When the console was made (just before the guest ran)."""
        self._cond = threading.Condition()
        self._sock = None
        self._reader = None

    def connect(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                sock.close()
                if time.monotonic() >= deadline:
                    raise exception.GuestConsoleTimeout(
                        guest=self.name, pattern='(connect)',
                        reason='nothing served %s within %s s (%s)'
                        % (self.path, timeout, e), tail='-')
                threading.Event().wait(CONNECT_RETRY)
        self._sock = sock
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name='console-%s' % self.name)
        self._reader.start()

    def _read(self) -> None:
        buf = b''
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                buf = self._feed(buf + data)
        except OSError:
            pass
        finally:
            self._end(buf)

    def _feed(self, buf: bytes) -> bytes:
        """Add the whole lines of ``buf``; return what follows them."""
        while b'\n' in buf:
            raw, buf = buf.split(b'\n', 1)
            self._add(raw.decode('utf-8', 'replace').rstrip('\r'))
        return buf

    def _end(self, buf: bytes) -> None:
        if buf:
            self._add(buf.decode('utf-8', 'replace').rstrip('\r'))
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def _add(self, text: str) -> None:
        line = Line(time.time(), time.monotonic(), text)
        with self._cond:
            self.lines.append(line)
            m = COUNTER.search(text)
            if m:
                marks = (self.durable if m.group(1) == 'DURABLE'
                         else self.committed)
                marks.append((int(m.group(2)), line.wall))
            else:
                m = COUNTER2.search(text)
                if m:
                    self.durable2.append((int(m.group(1)), line.wall))
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float,
                 start: int = 0) -> tuple:
        """(index, match) of the first line from ``start`` on matching
        ``pattern`` (re.search)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = regex.search(self.lines[i].text)
                    if m:
                        return i, m
                    i += 1
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    raise exception.GuestConsoleTimeout(
                        guest=self.name, pattern=pattern,
                        reason='before the console closed' if self.closed
                        else 'within %s s' % timeout, tail=self.tail())
                self._cond.wait(remaining)

    def _marks(self, disk: int) -> list:
        return self.durable2 if disk == 2 else self.durable

    def wait_durable(self, n: int, timeout: float, disk: int = 1) -> int:
        """Wait until the guest reported record ``n`` durable (on its
        second data disk: ``disk=2``)."""
        deadline = time.monotonic() + timeout
        marks = self._marks(disk)
        with self._cond:
            while not marks or marks[-1][0] < n:
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    raise exception.GuestConsoleTimeout(
                        guest=self.name, pattern='DURABLE%s %d' % (
                            '2' if disk == 2 else '', n),
                        reason='before the console closed' if self.closed
                        else 'within %s s' % timeout, tail=self.tail())
                self._cond.wait(remaining)
            return marks[-1][0]

    def durable_before(self, wall: float, disk: int = 1) -> int:
        """The highest record the guest reported durable before ``wall``
        (0: none; on its second data disk: ``disk=2``)."""
        with self._cond:
            return max((n for n, t in self._marks(disk) if t < wall),
                       default=0)

    def committed_before(self, wall: float) -> int:
        """The highest database transaction reported committed before
        ``wall`` (0: none)."""
        with self._cond:
            return max((n for n, t in self.committed if t < wall), default=0)

    def tail(self, count: int = 8) -> str:
        with self._cond:
            return ' | '.join(line.text for line in self.lines[-count:])

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if self._reader is not None:
                self._reader.join(5)
            self._sock.close()
            self._sock = None


class FileConsole(Console):
    """A console QEMU appends to the file ``path``, read from byte
    ``offset`` on (earlier runs' output before it). It closes when
    ``alive`` (if given) says the VM is gone and the file has no more, or
    on :meth:`close`."""

    def __init__(self, path: str, name: str = 'guest', offset: int = 0,
                 alive=None):
        super().__init__(path, name)
        self.offset = offset
        self._alive = alive
        self._stop = threading.Event()

    def connect(self, timeout: float = 10.0) -> None:
        """Start reading (the file may not exist yet: QEMU makes it)."""
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name='console-%s' % self.name)
        self._reader.start()

    def _read(self) -> None:
        buf, f = b'', None
        try:
            while not self._stop.is_set():
                if f is None:
                    try:
                        f = open(self.path, 'rb')
                    except FileNotFoundError:
                        self._stop.wait(FILE_POLL)
                        continue
                    f.seek(self.offset)
                data = f.read(65536)
                if data:
                    buf = self._feed(buf + data)
                elif self._alive is not None and not self._alive():
                    # NOTE: what it wrote between the read and its end.
                    buf = self._feed(buf + f.read())
                    break
                else:
                    self._stop.wait(FILE_POLL)
        except OSError:
            pass
        finally:
            if f is not None:
                f.close()
            self._end(buf)

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(5)
