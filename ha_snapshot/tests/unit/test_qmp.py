"""The QMP client against a scripted monitor on a unix socket.

A real QEMU cannot be made to send an event before its greeting on
demand (it does under load); a scripted server can, byte for byte.
"""

import json
import os
import socket
import threading

from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.hypervisor import qmp
from ha_snapshot.tests import base

GREETING = {'QMP': {'version': {'qemu': {'major': 7, 'minor': 2,
                                         'micro': 0}},
                    'capabilities': []}}


def _event(name: str) -> dict:
    return {'event': name, 'data': {},
            'timestamp': {'seconds': 1, 'microseconds': 0}}


class ScriptedMonitor(threading.Thread):
    """Accepts one client, sends ``opening`` at once, then answers every
    command with an empty return (after ``then``, once)."""

    def __init__(self, path: str, opening: bytes, then: bytes = b''):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.opening, self.then = opening, then
        self.commands = []

    def run(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.sendall(self.opening)
            buf = b''
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    msg = json.loads(line)
                    self.commands.append(msg['execute'])
                    out = self.then + json.dumps(
                        {'return': {}, 'id': msg['id']}).encode() + b'\n'
                    self.then = b''
                    conn.sendall(out)


class QmpClientTestCase(base.TestCase):

    def connect(self, opening: bytes, then: bytes = b''):
        path = self.path('qmp.sock')
        if os.path.exists(path):
            os.unlink(path)
        server = ScriptedMonitor(path, opening, then)
        server.start()
        self.addCleanup(server.sock.close)
        events = []
        client = qmp.QmpClient(path, vm='scripted',
                               on_event=lambda m: events.append(m['event']))
        self.addCleanup(client.close)
        return server, client, events

    @staticmethod
    def lines(*msgs) -> bytes:
        return b''.join(json.dumps(m).encode() + b'\n' for m in msgs)

    def test_event_before_the_greeting(self):
        server, client, events = self.connect(
            self.lines(_event('RESUME'), GREETING, _event('STOP')),
            then=self.lines(_event('BLOCK_JOB_COMPLETED')))
        self.assertEqual(GREETING, client.connect(5))
        self.assertEqual({}, client.execute('query-status', timeout=5))
        self.assertEqual(['qmp_capabilities', 'query-status'],
                         server.commands)
        # NOTE: in the order sent; none lost (the one after the greeting
        # came in the same read).
        self.assertEqual(['RESUME', 'STOP', 'BLOCK_JOB_COMPLETED'], events)

    def test_not_qmp(self):
        _server, client, _events = self.connect(b'220 smtp ready\n')
        e = self.assertRaises(hv_base.QmpError, client.connect, 5)
        self.assertIn('does not speak QMP', str(e))

    def test_too_many_events_before_the_greeting(self):
        flood = self.lines(*[_event('RESUME')] * (qmp.MAX_EARLY_EVENTS + 1))
        _server, client, _events = self.connect(flood)
        e = self.assertRaises(hv_base.QmpError, client.connect, 5)
        self.assertIn('does not speak QMP', str(e))
