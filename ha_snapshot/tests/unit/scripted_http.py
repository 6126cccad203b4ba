"""A scripted HTTP endpoint on 127.0.0.1 for unit tests of API clients.

:class:`ScriptedEndpoint` runs an ``http.server`` in a thread and hands
each request to ``app(request)``, which returns ``(status, headers,
body)``. Every request is recorded (method, path, query, headers, JSON
body) so that a test asserts exactly what a client sent. Request bodies are
not read up front: ``request.stream`` reads them as they arrive (plain or
chunked transfer encoding), so an app can consume an upload in pieces and
a test can prove that a client streams; a body that ends before its
length (the client went away) is flagged ``truncated``.
"""

import dataclasses
import http.server
import json
import socket
import threading
import urllib.parse

READ_BLOCK = 64 * 1024


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    stream: 'BodyStream'
    json: object = None
    body_bytes: int = 0

    def read_json(self):
        data = self.stream.read_all()
        self.body_bytes = len(data)
        self.json = json.loads(data) if data else None
        return self.json


class BodyStream:
    """The request body, read in pieces (Content-Length or chunked)."""

    def __init__(self, rfile, headers):
        self.rfile = rfile
        self.chunked = 'chunked' in headers.get(
            'Transfer-Encoding', '').lower()
        self.left = (None if self.chunked
                     else int(headers.get('Content-Length') or 0))
        self.chunk_left = 0
        self.done = False
        self.largest_read = 0
        # NOTE: the body ended before its length (the client went away
        # mid-request: killed, or its connection dropped).
        self.truncated = False

    def read(self, n: int = READ_BLOCK) -> bytes:
        if self.done:
            return b''
        try:
            return self._read(n)
        except OSError:
            # NOTE: the connection was reset under the read.
            self.done = self.truncated = True
            return b''

    def _read(self, n: int) -> bytes:
        if not self.chunked:
            data = self.rfile.read(min(n, self.left)) if self.left else b''
            self.left -= len(data)
            if not data or not self.left:
                self.done = True
                self.truncated = self.left > 0
        else:
            if not self.chunk_left:
                line = self.rfile.readline()
                if not line:
                    self.done = self.truncated = True
                    return b''
                size = int(line.split(b';')[0].strip(), 16)
                if size == 0:
                    # NOTE: trailers end with an empty line.
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    self.done = True
                    return b''
                self.chunk_left = size
            data = self.rfile.read(min(n, self.chunk_left))
            if not data:
                self.done = self.truncated = True
                return b''
            self.chunk_left -= len(data)
            if not self.chunk_left:
                self.rfile.readline()
        self.largest_read = max(self.largest_read, len(data))
        return data

    def read_all(self) -> bytes:
        parts = []
        while True:
            data = self.read()
            if not data:
                return b''.join(parts)
            parts.append(data)

    def drain(self) -> None:
        while self.read():
            pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt, *args):  # NOTE: keep test output quiet
        pass

    def setup(self):
        super().setup()
        with self.server.endpoint.lock:
            self.server.endpoint.connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.endpoint.lock:
                self.server.endpoint.connections.discard(self.connection)

    def _handle(self):
        endpoint = self.server.endpoint
        url = urllib.parse.urlsplit(self.path)
        req = Request(
            method=self.command, path=url.path,
            query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
            headers=dict(self.headers.items()),
            stream=BodyStream(self.rfile, self.headers))
        with endpoint.lock:
            endpoint.requests.append(req)
        try:
            status, headers, body = endpoint.app(req)
        except Exception as e:  # NOTE: a broken script must show, not hang
            endpoint.errors.append(e)
            status, headers, body = 599, {}, repr(e)
        if not req.stream.done:
            # NOTE: like a real server answering early (an error before
            # the whole upload arrived), then dropping the rest.
            try:
                req.stream.drain()
            except (OSError, ValueError):
                self.close_connection = True
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = {'Content-Type': 'application/json', **headers}
        data = body.encode() if isinstance(body, str) else (body or b'')
        if req.stream.truncated:
            # NOTE: the client is gone: nobody reads an answer.
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class ScriptedEndpoint:
    """An HTTP server on 127.0.0.1; use as a fixture-like object."""

    def __init__(self, app):
        self.app = app
        self.requests = []
        self.errors = []
        self.lock = threading.Lock()
        self.connections = set()
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                     _Handler)
        self.httpd.daemon_threads = True
        self.httpd.endpoint = self
        self.url = 'http://127.0.0.1:%d' % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={'poll_interval': 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving, like a service that died: the listener closes and
        so do the connections clients keep alive (a client with a pooled
        connection must not reach a stopped endpoint)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            open_connections = list(self.connections)
        for sock in open_connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(10)

    def calls(self, *, skip_get: bool = False) -> list:
        """(method, path) of every request so far."""
        return [(r.method, r.path) for r in self.requests
                if not (skip_get and r.method == 'GET')]
