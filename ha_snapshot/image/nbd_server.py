"""A small read-only NBD server over a unix socket.

What a live restore serves a restore point with: QEMU opens the socket as
an ``nbd`` block node under the restarted VM's new overlay and reads from
it until ``block-stream`` has copied everything. The protocol subset
(https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md):

* handshake: fixed newstyle only; options NBD_OPT_EXPORT_NAME, NBD_OPT_GO,
  NBD_OPT_INFO, NBD_OPT_LIST and NBD_OPT_ABORT; every other option
  (structured replies, meta contexts, TLS) is answered "unsupported" and
  the client goes on without it;
* transmission: simple replies to NBD_CMD_READ and NBD_CMD_DISC; a write,
  trim or write-zeroes answers EPERM (the export is read-only), flush and
  cache succeed, anything else EINVAL.

A bad request gets an error reply and the connection goes on: a read past
the end or longer than :data:`MAX_REQUEST` answers EINVAL, a read the
source cannot serve answers EIO (the source's error is logged and kept in
:attr:`NbdServer.errors`). Only a request that breaks the framing (a wrong
magic, a write whose payload is too long to skip) ends the connection.
Each connection has its own thread; requests on one connection are served
in order.

``read(offset, length) -> bytes`` is the whole contract with the data: the
server checks the range and the length of what comes back.

May import the standard library and oslo.log only.
"""

import errno
import os
import socket
import struct
import threading

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3e889045565a9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_CAN_MULTI_CONN = 1 << 8
TRANSMISSION_FLAGS = (TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH
                      | TFLAG_CAN_MULTI_CONN)

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6

MAX_REQUEST = 32 << 20
"""The longest read served (announced as the maximum block size)."""
MAX_OPTION = 64 << 10
"""The longest option payload accepted in the handshake."""

_REQUEST = struct.Struct('>IHHQQI')


class ProtocolError(Exception):
    """The peer broke the protocol: the connection ends."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError('peer closed the connection')
        buf += chunk
    return bytes(buf)


class NbdServer:
    """Serve ``read`` as the read-only export ``name`` of ``size`` bytes
    on the unix socket ``path`` (created mode 0600, removed on stop)."""

    def __init__(self, path: str, name: str, size: int, read):
        self.path = path
        self.name = name
        self.size = size
        self.read = read
        self.errors = []
        """The source's errors, oldest first (each also answered EIO)."""
        self.reads = 0
        self.bytes_read = 0
        self._sock = None
        self._thread = None
        self._conns = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> 'NbdServer':
        if os.path.exists(self.path):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(8)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop,
                                        name='nbd-%s' % self.name[:16],
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the socket and every connection; wait for the threads."""
        self._stopped.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn, _thread in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _conn, thread in conns:
            thread.join(5)
        if self._thread is not None:
            self._thread.join(5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,),
                                      name='nbd-conn-%s' % self.name[:12],
                                      daemon=True)
            with self._lock:
                self._conns.add((conn, thread))
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._handshake(conn):
                self._transmission(conn)
        except (EOFError, ConnectionError):
            pass
        except ProtocolError as e:
            LOG.warning('NBD export %s: connection closed: %s', self.name, e)
        except OSError as e:
            if not self._stopped.is_set():
                LOG.warning('NBD export %s: connection failed: %s',
                            self.name, e)
        finally:
            conn.close()
            with self._lock:
                self._conns = {c for c in self._conns if c[0] is not conn}

    # --- handshake ----------------------------------------------------------

    def _handshake(self, conn) -> bool:
        """True when transmission starts; False when the client left."""
        conn.sendall(struct.pack('>QQH', NBDMAGIC, IHAVEOPT,
                                 FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (cflags,) = struct.unpack('>I', _recv_exact(conn, 4))
        if cflags & ~CLIENT_FLAGS or not cflags & FLAG_FIXED_NEWSTYLE:
            raise ProtocolError('client flags 0x%x: only fixed newstyle '
                                'is served' % cflags)
        no_zeroes = bool(cflags & FLAG_NO_ZEROES)
        while True:
            magic, option, length = struct.unpack('>QII',
                                                  _recv_exact(conn, 16))
            if magic != IHAVEOPT:
                raise ProtocolError('option magic 0x%x' % magic)
            if length > MAX_OPTION:
                raise ProtocolError('option %d of %d bytes' % (option,
                                                               length))
            data = _recv_exact(conn, length)
            if option == OPT_EXPORT_NAME:
                if data.decode('utf-8', 'replace') != self.name:
                    # NOTE: the protocol has no error reply here.
                    raise ProtocolError('unknown export %r' % data[:64])
                conn.sendall(struct.pack('>QH', self.size,
                                         TRANSMISSION_FLAGS)
                             + (b'' if no_zeroes else bytes(124)))
                return True
            if option == OPT_ABORT:
                self._reply(conn, option, REP_ACK)
                return False
            if option == OPT_LIST:
                name = self.name.encode()
                self._reply(conn, option, REP_SERVER,
                            struct.pack('>I', len(name)) + name)
                self._reply(conn, option, REP_ACK)
            elif option in (OPT_INFO, OPT_GO):
                if self._info(conn, option, data) and option == OPT_GO:
                    return True
            else:
                self._reply(conn, option, REP_ERR_UNSUP)

    def _info(self, conn, option: int, data: bytes) -> bool:
        if len(data) < 6:
            self._reply(conn, option, REP_ERR_INVALID)
            return False
        (nlen,) = struct.unpack('>I', data[:4])
        if 4 + nlen + 2 > len(data):
            self._reply(conn, option, REP_ERR_INVALID)
            return False
        name = data[4:4 + nlen].decode('utf-8', 'replace')
        # NOTE: an empty name is the default export: ours.
        if name not in ('', self.name):
            self._reply(conn, option, REP_ERR_UNKNOWN,
                        b'unknown export')
            return False
        self._reply(conn, option, REP_INFO, struct.pack(
            '>HQH', INFO_EXPORT, self.size, TRANSMISSION_FLAGS))
        self._reply(conn, option, REP_INFO, struct.pack(
            '>HIII', INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST))
        self._reply(conn, option, REP_ACK)
        return True

    @staticmethod
    def _reply(conn, option: int, kind: int, data: bytes = b'') -> None:
        conn.sendall(struct.pack('>QIII', REPLY_MAGIC, option, kind,
                                 len(data)) + data)

    # --- transmission -------------------------------------------------------

    def _transmission(self, conn) -> None:
        while True:
            magic, _flags, cmd, handle, offset, length = _REQUEST.unpack(
                _recv_exact(conn, _REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise ProtocolError('request magic 0x%x' % magic)
            if cmd == CMD_DISC:
                return
            if cmd == CMD_READ:
                self._do_read(conn, handle, offset, length)
            elif cmd == CMD_WRITE:
                if length > MAX_REQUEST:
                    raise ProtocolError('a write of %d bytes' % length)
                _recv_exact(conn, length)
                self._simple(conn, handle, errno.EPERM)
            elif cmd in (CMD_TRIM, CMD_WRITE_ZEROES):
                self._simple(conn, handle, errno.EPERM)
            elif cmd in (CMD_FLUSH, CMD_CACHE):
                self._simple(conn, handle, 0)
            else:
                self._simple(conn, handle, errno.EINVAL)

    def _do_read(self, conn, handle: int, offset: int, length: int) -> None:
        if length == 0 or length > MAX_REQUEST or (
                offset + length > self.size):
            self._simple(conn, handle, errno.EINVAL)
            return
        try:
            data = self.read(offset, length)
            if len(data) != length:
                raise IOError('the source returned %d bytes for a read of '
                              '%d at %d' % (len(data), length, offset))
        except Exception as e:
            LOG.error('NBD export %s: read of %d bytes at %d failed: %s',
                      self.name, length, offset, e)
            with self._lock:
                self.errors.append('%s: %s' % (type(e).__name__, e))
            self._simple(conn, handle, errno.EIO)
            return
        with self._lock:
            self.reads += 1
            self.bytes_read += length
        conn.sendall(struct.pack('>IIQ', SIMPLE_REPLY_MAGIC, 0, handle)
                     + data)

    @staticmethod
    def _simple(conn, handle: int, error: int) -> None:
        conn.sendall(struct.pack('>IIQ', SIMPLE_REPLY_MAGIC, error, handle))
