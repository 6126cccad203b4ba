"""Live restore's parts: the agent's read-only NBD server, spoken to over
its real unix socket by a client written from the protocol document; the
reader behind it (ha_snapshot/agent/live_restore.py ChunkReader); the
overlay it starts on (ha_snapshot/hypervisor/live_restore.py)."""

import base64
import errno
import hashlib
import os
import socket
import struct
import subprocess

from ha_snapshot.agent import live_restore
from ha_snapshot import exception
from ha_snapshot.hypervisor import live_restore as hv_live
from ha_snapshot.hypervisor import qcow2new
from ha_snapshot.image import nbd_server as nbd
from ha_snapshot.image import qemu
from ha_snapshot.tests import base

SIZE = 1 << 20


def recv_exact(sock, n):
    buf = b''
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError('closed after %d of %d bytes' % (len(buf), n))
        buf += chunk
    return buf


class Client:
    """A minimal fixed-newstyle client."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        magic, opt, flags = struct.unpack('>QQH', recv_exact(self.sock, 18))
        assert (magic, opt) == (nbd.NBDMAGIC, nbd.IHAVEOPT)
        self.flags = flags

    def send_flags(self, flags=nbd.CLIENT_FLAGS):
        self.sock.sendall(struct.pack('>I', flags))

    def option(self, option, data=b''):
        self.sock.sendall(struct.pack('>QII', nbd.IHAVEOPT, option,
                                      len(data)) + data)

    def reply(self):
        magic, option, kind, length = struct.unpack(
            '>QIII', recv_exact(self.sock, 20))
        assert magic == nbd.REPLY_MAGIC
        return option, kind, recv_exact(self.sock, length)

    def go(self, name='rp'):
        self.option(nbd.OPT_GO, struct.pack('>I', len(name)) + name.encode()
                    + struct.pack('>H', 0))
        replies = []
        while True:
            replies.append(self.reply())
            if replies[-1][1] != nbd.REP_INFO:
                return replies

    def request(self, cmd, offset, length, handle=7, payload=b''):
        self.sock.sendall(struct.pack('>IHHQQI', nbd.REQUEST_MAGIC, 0, cmd,
                                      handle, offset, length) + payload)

    def simple(self, length=0):
        magic, error, handle = struct.unpack('>IIQ',
                                             recv_exact(self.sock, 16))
        assert magic == nbd.SIMPLE_REPLY_MAGIC
        data = recv_exact(self.sock, length) if not error and length else b''
        return error, handle, data


class NbdServerTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.data = os.urandom(SIZE)
        self.fail_reads = False
        self.server = nbd.NbdServer(self.path('s.sock'), 'rp', SIZE,
                                    self.read).start()
        self.addCleanup(self.server.stop)

    def read(self, offset, length):
        if self.fail_reads:
            raise IOError('the store is away')
        return self.data[offset:offset + length]

    def connect(self):
        c = Client(self.server.path)
        self.addCleanup(c.sock.close)
        c.send_flags()
        return c

    def assert_closed(self, c):
        c.sock.settimeout(10)
        self.assertEqual(b'', c.sock.recv(1))

    def test_socket_is_private(self):
        self.assertEqual(0o600, os.stat(self.server.path).st_mode & 0o777)

    def test_go_then_reads(self):
        c = self.connect()
        self.assertEqual(nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES,
                         c.flags)
        replies = c.go()
        info = [r for r in replies if r[1] == nbd.REP_INFO]
        self.assertEqual((nbd.REP_ACK, b''), replies[-1][1:])
        kind, size, tflags = struct.unpack('>HQH', info[0][2])
        self.assertEqual((nbd.INFO_EXPORT, SIZE), (kind, size))
        self.assertTrue(tflags & nbd.TFLAG_READ_ONLY)
        c.request(nbd.CMD_READ, 4096, 8192, handle=42)
        self.assertEqual((0, 42, self.data[4096:12288]), c.simple(8192))
        c.request(nbd.CMD_DISC, 0, 0)
        self.assert_closed(c)
        self.assertEqual((1, 8192), (self.server.reads,
                                     self.server.bytes_read))

    def test_export_name_option(self):
        c = self.connect()
        c.option(nbd.OPT_EXPORT_NAME, b'rp')
        size, tflags = struct.unpack('>QH', recv_exact(c.sock, 10))
        self.assertEqual(SIZE, size)
        c.request(nbd.CMD_READ, SIZE - 512, 512)
        self.assertEqual((0, 7, self.data[-512:]), c.simple(512))

    def test_unknown_export_and_options(self):
        c = self.connect()
        c.option(8)  # NBD_OPT_STRUCTURED_REPLY: not served
        self.assertEqual((8, nbd.REP_ERR_UNSUP, b''), c.reply())
        replies = c.go('other')
        self.assertEqual(nbd.REP_ERR_UNKNOWN, replies[-1][1])
        c.option(nbd.OPT_LIST)
        option, kind, data = c.reply()
        self.assertEqual((nbd.REP_SERVER, b'\x00\x00\x00\x02rp'),
                         (kind, data))
        self.assertEqual(nbd.REP_ACK, c.reply()[1])
        self.assertEqual(nbd.REP_ACK, c.go('')[-1][1])  # the default one
        c.request(nbd.CMD_READ, 0, 16)
        self.assertEqual(self.data[:16], c.simple(16)[2])

    def test_bad_requests_answer_errors_and_the_connection_goes_on(self):
        c = self.connect()
        c.go()
        for offset, length in ((SIZE - 511, 512), (SIZE, 1), (2 ** 63, 1),
                               (0, 0), (0, nbd.MAX_REQUEST + 1)):
            c.request(nbd.CMD_READ, offset, length, handle=offset % 1000)
            self.assertEqual((errno.EINVAL, offset % 1000, b''),
                             c.simple(length), (offset, length))
        c.request(nbd.CMD_WRITE, 0, 4, payload=b'abcd')
        self.assertEqual(errno.EPERM, c.simple()[0])
        for cmd in (nbd.CMD_TRIM, nbd.CMD_WRITE_ZEROES):
            c.request(cmd, 0, 4096)
            self.assertEqual(errno.EPERM, c.simple()[0])
        c.request(nbd.CMD_FLUSH, 0, 0)
        self.assertEqual(0, c.simple()[0])
        c.request(99, 0, 0)
        self.assertEqual(errno.EINVAL, c.simple()[0])
        self.fail_reads = True
        c.request(nbd.CMD_READ, 0, 512)
        self.assertEqual(errno.EIO, c.simple(512)[0])
        self.assertEqual(['OSError: the store is away'], self.server.errors)
        self.fail_reads = False
        c.request(nbd.CMD_READ, 512, 512)
        self.assertEqual((0, 7, self.data[512:1024]), c.simple(512))

    def test_source_returning_short_data_is_an_eio(self):
        self.data = self.data[:100]
        c = self.connect()
        c.go()
        c.request(nbd.CMD_READ, 0, 512)
        self.assertEqual(errno.EIO, c.simple(512)[0])
        self.assertIn('returned 100 bytes', self.server.errors[0])

    def test_broken_framing_closes_only_that_connection(self):
        c = self.connect()
        c.go()
        c.sock.sendall(b'\x00' * 28)  # a request with a wrong magic
        self.assert_closed(c)
        d = self.connect()
        d.option(0xdead, b'')
        d.sock.sendall(struct.pack('>QII', 0x1234, 1, 0))
        self.assertEqual(nbd.REP_ERR_UNSUP, d.reply()[1])
        self.assert_closed(d)
        e = Client(self.server.path)
        self.addCleanup(e.sock.close)
        e.send_flags(0x80)  # unknown client flag
        self.assert_closed(e)
        f = self.connect()
        f.go()
        f.request(nbd.CMD_WRITE, 0, nbd.MAX_REQUEST + 1)
        self.assert_closed(f)
        g = self.connect()
        g.go()
        g.request(nbd.CMD_READ, 0, 4)
        self.assertEqual(self.data[:4], g.simple(4)[2])

    def test_oversized_option_closes(self):
        c = self.connect()
        c.sock.sendall(struct.pack('>QII', nbd.IHAVEOPT, nbd.OPT_GO,
                                   nbd.MAX_OPTION + 1))
        self.assert_closed(c)

    def test_stop_ends_connections_and_removes_the_socket(self):
        c = self.connect()
        c.go()
        self.server.stop()
        self.assert_closed(c)
        self.assertFalse(os.path.exists(self.server.path))
        self.assertEqual(0, self.server.connections)


class ChunkReaderTest(base.TestCase):

    CHUNK = 4096

    def setUp(self):
        super().setUp()
        self.chunks = {0: os.urandom(self.CHUNK), 2: os.urandom(self.CHUNK),
                       3: os.urandom(1000)}
        self.size = 3 * self.CHUNK + 1000
        self.calls = []
        self.manifest = {
            'id': 'rp-1', 'virtual_size': self.size,
            'chunk_size': self.CHUNK,
            'chunks': {str(k): hashlib.sha256(v).hexdigest()
                       for k, v in self.chunks.items()}}

    def get_chunk(self, index):
        self.calls.append(index)
        return base64.b64encode(self.chunks[index]).decode()

    def test_reads_across_chunks_and_zeros(self):
        r = live_restore.ChunkReader(self.manifest, self.get_chunk,
                                     cache_chunks=2)
        whole = (self.chunks[0] + bytes(self.CHUNK) + self.chunks[2]
                 + self.chunks[3])
        self.assertEqual(whole, r.read(0, self.size))
        self.assertEqual(whole[4000:9000], r.read(4000, 5000))
        # NOTE: chunk 1 is zeros, never fetched; two chunks are kept.
        self.assertEqual([0, 2, 3, 0, 2], self.calls)
        self.assertRaises(ValueError, r.read, self.size - 1, 2)

    def test_a_chunk_failing_its_checksum_is_an_error(self):
        self.chunks[2] = b'x' * self.CHUNK
        r = live_restore.ChunkReader(self.manifest, self.get_chunk)
        e = self.assertRaises(exception.CorruptObject, r.read, 8192, 10)
        self.assertIn('Chunk 2 of restore point rp-1', str(e))

    def test_zero_ranges(self):
        G = 1 << 30
        self.assertEqual([(4096, 4096)],
                         hv_live.zero_ranges(self.size, self.CHUNK,
                                             {0, 2, 3}))
        self.assertEqual([(0, G), (G, G), (2 * G, 512)],
                         hv_live.zero_ranges(2 * G + 512, 1 << 20, set()))
        self.assertEqual([], hv_live.zero_ranges(2 << 20, 1 << 20, {0, 1}))


class ZeroOverlayTest(base.TestCase):
    """The overlay a live restore starts on: its zero clusters written
    directly give the same image as qemu-io's ``write -z`` of the same
    ranges, and ``qemu-img check`` finds nothing wrong."""

    def test_mark_zeros_equals_qemu_io(self):
        size = 4 * (1 << 30) + 512
        chunk = 1 << 20
        present = {i * 61 for i in range(60)} | {4095, 4096}
        zeros = hv_live.zero_ranges(size, chunk, present)
        backing = hv_live.nbd_backing(self.path('s.sock'), 'rp', 5)
        fast = self.path('fast.qcow2')
        hv_live.create_overlay(fast, size, backing, zeros)
        slow = self.path('slow.qcow2')
        open(slow, 'wb').close()
        qcow2new.create(slow, size, hv_live.CLUSTER_SIZE, backing, 'raw')
        hv_live._write_zeros(slow, zeros, qemu.DEFAULT_LIMITS)
        fast_map = qemu.map_ranges(fast, 'qcow2')
        self.assertEqual(qemu.map_ranges(slow, 'qcow2'), fast_map)
        self.assertEqual(
            [{'start': 0, 'length': chunk, 'present': False}],
            [{k: e[k] for k in ('start', 'length', 'present')}
             for e in fast_map[:1]])
        self.assertTrue(fast_map[1]['present'] and fast_map[1]['zero'])
        report = qemu.check(fast)
        self.assertEqual(0, report.get('corruptions', 0), report)
        self.assertEqual(0, report.get('leaks', 0), report)
        self.assertEqual(backing, qemu.info(fast, 'qcow2')['backing-filename'])

    def test_other_layouts_are_left_to_qemu_io(self):
        path = self.path('other.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
                        'refcount_bits=8', path, '1G'], check=True)
        with open(path, 'rb') as f:
            before = f.read()
        self.assertFalse(hv_live.mark_zeros(path, 1 << 30,
                                            [(0, 1 << 20)]))
        with open(path, 'rb') as f:
            self.assertEqual(before, f.read())
