"""A small synchronous QMP client: one unix socket, one reader thread.

Commands may be sent from any thread; each carries an id and waits, with a
timeout that names the command, for the reply with that id. The reader
thread hands every asynchronous event to ``on_event`` (it must not block:
the driver queues events for its own dispatcher) and reports the end of the
connection once through ``on_close``. No asyncio, no eventlet.

Why not the ``qemu.qmp`` package: it is asyncio-based; its synchronous
wrapper runs an event loop per connection and leaves events to be pulled
by the caller, whereas the agent wants events pushed to subscribers from a
thread while other threads send commands. The protocol itself is a
newline-separated JSON stream and fits in this module.

May import the standard library, oslo.log and ha_snapshot.hypervisor.base
only.
"""

import json
import select
import socket
import struct
import threading
import time

from oslo_log import log as logging

from ha_snapshot.hypervisor import base

LOG = logging.getLogger(__name__)

# NOTE: the largest reply we accept (query-named-block-nodes of long chains
# is the biggest one we ask for); a monitor sending more is broken.
MAX_MESSAGE = 32 << 20
CONNECT_RETRY = 0.02
# NOTE: QEMU (7.2 seen here) may queue an event (RESUME, under load) on a
# new monitor connection ahead of the greeting; a few such events are
# taken and delivered after it, more is not a QMP server.
MAX_EARLY_EVENTS = 16


class _Pending:
    __slots__ = ('done', 'reply')

    def __init__(self):
        self.done = threading.Event()
        self.reply = None


class QmpClient:
    """One QMP connection. ``vm`` only names the VM in messages."""

    def __init__(self, path: str, *, vm: str = '?', on_event=None,
                 on_close=None):
        self.path = path
        self.vm = vm
        self.greeting = None
        self.peer_pid = None
        self._on_event = on_event
        self._on_close = on_close
        self._sock = None
        self._reader = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending = {}
        self._next_id = 0
        self._closed = False
        self._close_reason = 'not connected'
        self._closing = threading.Event()

    # --- connection ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> str:
        return self._close_reason

    def connect(self, timeout: float, retry_wait=None) -> dict:
        """Connect (retrying while the socket is not there yet), read the
        greeting and leave capabilities negotiation mode.

        ``retry_wait(seconds)`` waits between attempts and may raise, e.g.
        when the QEMU process being waited for has exited.
        """
        deadline = time.monotonic() + timeout
        retry_wait = retry_wait or self._closing.wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.connect(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError,
                    socket.timeout) as e:
                sock.close()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise base.QmpError(
                        vm=self.vm, command='connect',
                        reason='nothing accepted connections on %s within '
                               '%s s (%s)' % (self.path, timeout, e))
                retry_wait(min(CONNECT_RETRY, remaining))
            except OSError as e:
                sock.close()
                raise base.QmpError(vm=self.vm, command='connect',
                                    reason='%s: %s' % (self.path, e))
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize('3i'))
            self.peer_pid = struct.unpack('3i', creds)[0] or None
        except OSError:
            self.peer_pid = None
        try:
            self.greeting, early, rest = self._read_greeting(sock, deadline,
                                                             timeout)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        self._sock = sock
        self._closed = False
        self._close_reason = ''
        for msg in early:
            self._deliver(msg)
        self._reader = threading.Thread(
            target=self._read_loop, args=(rest,),
            name='qmp-reader-%s' % self.vm, daemon=True)
        self._reader.start()
        try:
            self.execute('qmp_capabilities',
                         timeout=max(0.001, deadline - time.monotonic()))
        except BaseException:
            self.close()
            raise
        return self.greeting

    def _read_greeting(self, sock, deadline, timeout) -> tuple:
        """(greeting, events that came before it, bytes after it)."""
        buf = bytearray()
        early = []
        while True:
            while b'\n' in buf:
                end = buf.index(b'\n')
                line = bytes(buf[:end]).strip()
                del buf[:end + 1]
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if isinstance(msg, dict) and 'QMP' in msg:
                    return msg, early, bytes(buf)
                if isinstance(msg, dict) and 'event' in msg and (
                        len(early) < MAX_EARLY_EVENTS):
                    LOG.debug('VM %s: event %s before the QMP greeting',
                              self.vm, msg.get('event'))
                    early.append(msg)
                    continue
                raise base.QmpError(vm=self.vm, command='connect',
                                    reason='%s does not speak QMP: %r'
                                    % (self.path, line[:200]))
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise socket.timeout()
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
            except socket.timeout:
                raise base.QmpError(
                    vm=self.vm, command='connect',
                    reason='connected to %s but no QMP greeting came within '
                           '%s s; QMP serves one client at a time: is '
                           'another client (libvirt?) connected?'
                           % (self.path, timeout))
            except OSError as e:
                raise base.QmpError(vm=self.vm, command='connect',
                                    reason='%s: %s' % (self.path, e))
            if not chunk:
                raise base.QmpError(
                    vm=self.vm, command='connect',
                    reason='%s closed before the QMP greeting' % self.path)
            buf += chunk
            if len(buf) > MAX_MESSAGE:
                raise base.QmpError(vm=self.vm, command='connect',
                                    reason='oversized greeting')

    def close(self) -> None:
        """Close the connection; waiting commands fail at once."""
        self._closing.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._shutdown('closed by the agent')
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(5)

    def wait_closed(self, timeout: float) -> bool:
        """Wait for the reader thread to see the end of the connection."""
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
        return self._closed

    def _shutdown(self, reason: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_reason = reason
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.done.set()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._on_close is not None:
            try:
                self._on_close(reason)
            except Exception:
                LOG.exception('VM %s: on_close callback failed', self.vm)

    # --- commands ------------------------------------------------------------

    def execute(self, command: str, arguments: dict | None = None, *,
                timeout: float, fd: int | None = None):
        """Run one command; its ``return`` value, or raise QmpError,
        QmpTimeout or VMNotRunning. ``fd``: a file descriptor passed with
        the command (SCM_RIGHTS), as ``getfd`` wants."""
        deadline = time.monotonic() + timeout
        pending = _Pending()
        with self._lock:
            if self._closed or self._sock is None:
                raise base.VMNotRunning(
                    vm=self.vm, reason='QMP %s not sent: %s'
                    % (command, self._close_reason))
            self._next_id += 1
            ident = self._next_id
            self._pending[ident] = pending
        msg = {'execute': command, 'id': ident}
        if arguments:
            msg['arguments'] = arguments
        try:
            self._send(json.dumps(msg).encode() + b'\n', deadline, command,
                       timeout, fd)
        except BaseException:
            with self._lock:
                self._pending.pop(ident, None)
            raise
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                self._pending.pop(ident, None)
            if not pending.done.is_set():
                raise base.QmpTimeout(vm=self.vm, command=command,
                                      timeout=timeout)
        reply = pending.reply
        if reply is None:
            raise base.VMNotRunning(
                vm=self.vm, reason='the monitor closed while waiting for %s '
                '(%s)' % (command, self._close_reason))
        if 'error' in reply:
            err = reply['error'] if isinstance(reply['error'], dict) else {}
            raise base.QmpError(
                vm=self.vm, command=command,
                reason='%s: %s' % (err.get('class', 'Error'),
                                   err.get('desc', reply['error'])),
                error_class=err.get('class'), desc=err.get('desc'))
        return reply.get('return')

    def _send(self, data: bytes, deadline: float, command: str,
              timeout: float, fd: int | None = None) -> None:
        view = memoryview(data)
        poller = select.poll()
        with self._send_lock:
            sock = self._sock
            poller.register(sock.fileno(), select.POLLOUT)
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise base.QmpTimeout(vm=self.vm, command=command,
                                          timeout=timeout)
                if not poller.poll(remaining * 1000):
                    continue
                try:
                    if fd is not None:
                        # NOTE: the descriptor rides on the first byte sent.
                        n = socket.send_fds(sock, [view], [fd],
                                            socket.MSG_DONTWAIT)
                        fd = None
                    else:
                        n = sock.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise base.VMNotRunning(
                        vm=self.vm, reason='QMP %s not sent: %s'
                        % (command, e))
                view = view[n:]

    # --- reader --------------------------------------------------------------

    def _read_loop(self, rest: bytes = b'') -> None:
        # NOTE: ``rest``: what came right after the greeting (an event,
        # even the first reply), read with it.
        buf = bytearray()
        chunk = rest
        reason = 'QEMU closed the monitor connection'
        try:
            while True:
                if not chunk:
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        break
                buf += chunk
                chunk = b''
                start = 0
                while True:
                    end = buf.find(b'\n', start)
                    if end < 0:
                        break
                    line = bytes(buf[start:end]).strip()
                    start = end + 1
                    if line:
                        self._dispatch(line)
                del buf[:start]
                if len(buf) > MAX_MESSAGE:
                    reason = 'QMP message over %d bytes' % MAX_MESSAGE
                    break
        except ConnectionResetError:
            pass  # NOTE: how QEMU's exit often looks from here
        except OSError as e:
            if not self._closing.is_set():
                reason = 'monitor connection failed: %s' % e
        if self._closing.is_set():
            reason = 'closed by the agent'
        self._shutdown(reason)

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            LOG.warning('VM %s: unparsable QMP message %r', self.vm,
                        line[:200])
            return
        if not isinstance(msg, dict):
            return
        if 'event' in msg:
            self._deliver(msg)
            return
        ident = msg.get('id')
        with self._lock:
            pending = (self._pending.pop(ident, None)
                       if isinstance(ident, int) else None)
        if pending is None:
            # NOTE: a reply after its command timed out, or an error QEMU
            # could not tie to a command.
            LOG.debug('VM %s: unclaimed QMP message %r', self.vm,
                      line[:200])
            return
        pending.reply = msg
        pending.done.set()

    def _deliver(self, msg: dict) -> None:
        if self._on_event is not None:
            try:
                self._on_event(msg)
            except Exception:
                LOG.exception('VM %s: event handler failed', self.vm)
