"""A client of the QEMU guest agent (qemu-ga) over its unix socket.

The ``qemu`` driver gives every VM it launches a virtio-serial port named
``org.qemu.guest_agent.0`` whose host end is a unix socket (a QEMU
``socket`` chardev, server side); qemu-ga in the guest reads JSON commands
from that port and writes one JSON answer per line.

The channel has no request ids and keeps what a previous client left in
it (an answer nobody read, half a command): :meth:`GuestAgent.sync` sends
the 0xFF byte (qemu-ga's parser resets on it) and ``guest-sync-delimited``
with a random id; the answer comes after a 0xFF byte, and every answer
before the one that carries our id is a stale one and is dropped. After
a sync the answers come in the order of the commands. Every command is
bounded by a timeout (:class:`~ha_snapshot.exception.GuestAgentTimeout`).

QEMU serves one client at a time on the socket: a client connects for one
exchange (a quiesce) and closes. :func:`channel_lock` serialises the
clients of one socket inside this process (the quiesce and the health
monitor's ping).

May import the standard library, oslo.log and ha_snapshot.exception.
"""

import json
import os
import secrets
import socket
import threading
import time

from oslo_log import log as logging

from ha_snapshot import exception

LOG = logging.getLogger(__name__)

PORT_NAME = 'org.qemu.guest_agent.0'
DELIMITER = b'\xff'
MAX_ANSWER = 1 << 20

_locks = {}
_locks_guard = threading.Lock()


def channel_lock(path: str) -> threading.Lock:
    """The lock of the guest agent socket ``path`` (one client at a
    time: QEMU does not read a second connection until the first
    closes)."""
    with _locks_guard:
        return _locks.setdefault(os.path.abspath(path), threading.Lock())


class GuestAgent:
    """One connection to a VM's guest agent (a context manager)."""

    def __init__(self, path: str, vm: str = '?'):
        self.path = path
        self.vm = vm
        self._sock = None
        self._buf = b''
        self._send_lock = threading.Lock()

    # --- connection ---------------------------------------------------------

    def connect(self, timeout: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise exception.GuestAgentError(
                vm=self.vm, command='connect to %s' % self.path, reason=e)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b''

    def __enter__(self) -> 'GuestAgent':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the wire -----------------------------------------------------------

    def send(self, command: str, arguments: dict | None = None,
             prefix: bytes = b'') -> None:
        """Write one command (no wait for its answer). Safe from another
        thread while one waits for an answer."""
        if self._sock is None:
            raise exception.GuestAgentError(vm=self.vm, command=command,
                                            reason='not connected')
        msg = {'execute': command}
        if arguments:
            msg['arguments'] = arguments
        try:
            with self._send_lock:
                self._sock.sendall(prefix + json.dumps(msg).encode() + b'\n')
        except OSError as e:
            raise exception.GuestAgentError(vm=self.vm, command=command,
                                            reason=e)

    def _fill(self, command: str, deadline: float, timeout: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise exception.GuestAgentTimeout(vm=self.vm, command=command,
                                              timeout='%.3g' % timeout)
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(65536)
        except socket.timeout:
            raise exception.GuestAgentTimeout(vm=self.vm, command=command,
                                              timeout='%.3g' % timeout)
        except OSError as e:
            raise exception.GuestAgentError(vm=self.vm, command=command,
                                            reason=e)
        if not data:
            raise exception.GuestAgentError(vm=self.vm, command=command,
                                            reason='the socket closed')
        self._buf += data
        if len(self._buf) > MAX_ANSWER:
            raise exception.GuestAgentError(
                vm=self.vm, command=command,
                reason='more than %d bytes without an answer' % MAX_ANSWER)

    def _answer(self, command: str, deadline: float, timeout: float):
        """The next JSON answer (a line); a line that is not JSON is
        dropped (what a previous client left half-read)."""
        while True:
            while b'\n' not in self._buf:
                self._fill(command, deadline, timeout)
            line, self._buf = self._buf.split(b'\n', 1)
            line = line.strip().lstrip(DELIMITER)
            if not line:
                continue
            try:
                answer = json.loads(line)
            except ValueError:
                LOG.debug('VM %s: guest agent line dropped: %r', self.vm,
                          line[:200])
                continue
            if isinstance(answer, dict):
                return answer

    def execute(self, command: str, arguments: dict | None = None,
                timeout: float = 5.0):
        """One command and its answer's ``return`` (after a sync)."""
        deadline = time.monotonic() + timeout
        self.send(command, arguments)
        answer = self._answer(command, deadline, timeout)
        if 'error' in answer:
            error = answer['error'] if isinstance(answer['error'],
                                                  dict) else {}
            raise exception.GuestAgentError(
                vm=self.vm, command=command,
                reason='%s: %s' % (error.get('class', 'error'),
                                   error.get('desc', answer['error'])))
        if 'return' not in answer:
            raise exception.GuestAgentError(
                vm=self.vm, command=command,
                reason='unexpected answer %r' % (answer,))
        return answer['return']

    # --- commands -----------------------------------------------------------

    def sync(self, timeout: float) -> None:
        """Make the channel ours: drop whatever stale answers it holds,
        up to the answer to a ``guest-sync-delimited`` with a random id."""
        command = 'guest-sync-delimited'
        deadline = time.monotonic() + timeout
        ident = secrets.randbelow(1 << 31) + 1
        self._buf = b''
        self.send(command, {'id': ident}, prefix=DELIMITER)
        while True:
            while DELIMITER not in self._buf:
                self._buf = b''
                self._fill(command, deadline, timeout)
            self._buf = self._buf.split(DELIMITER, 1)[1]
            answer = self._answer(command, deadline, timeout)
            if answer.get('return') == ident:
                return
            LOG.debug('VM %s: stale guest agent answer dropped: %r',
                      self.vm, answer)

    def ping(self, timeout: float) -> None:
        """Connect if needed, sync and ``guest-ping``, all within
        ``timeout``; raises GuestAgentError (or its Timeout) if silent."""
        deadline = time.monotonic() + timeout
        if self._sock is None:
            self.connect(timeout)
        self.sync(max(0.001, deadline - time.monotonic()))
        self.execute('guest-ping', timeout=max(0.001,
                                               deadline - time.monotonic()))

    def freeze(self, timeout: float) -> int:
        """``guest-fsfreeze-freeze``: the number of file systems frozen."""
        return self.execute('guest-fsfreeze-freeze', timeout=timeout)

    def thaw(self, timeout: float) -> int:
        return self.execute('guest-fsfreeze-thaw', timeout=timeout)

    def status(self, timeout: float) -> str:
        """``guest-fsfreeze-status``: 'thawed' or 'frozen'."""
        return self.execute('guest-fsfreeze-status', timeout=timeout)

    def send_thaw(self) -> None:
        """Write a thaw without waiting (the freeze bound's timer; the
        caller syncs before it reads answers again)."""
        self.send('guest-fsfreeze-thaw')
