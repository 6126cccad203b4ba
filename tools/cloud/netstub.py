"""A few-line network endpoint for Nova: every list is empty.

Nova calls the network API (Neutron) even for servers booted with
``networks='none'``: to show and to delete them it lists their ports,
floating IPs and security groups. No such thing exists here, so every
GET of a collection answers an empty list of that collection; a GET of
one resource answers 404. Run: ``python3 -m tools.cloud.netstub PORT``.

Standard library only.
"""

import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split('?', 1)[0].strip('/')
        parts = path.split('/')
        if path in ('', 'v2.0'):
            self._send(200, {'versions': [{'id': 'v2.0', 'status':
                                           'CURRENT', 'links': []}]})
        elif parts[-1] == 'extensions':
            self._send(200, {'extensions': []})
        elif len(parts) == 2:
            # NOTE: "/v2.0/ports.json" and "/v2.0/ports" alike.
            name = parts[1].split('.', 1)[0].replace('-', '_')
            self._send(200, {name: []})
        else:
            self._send(404, {'NeutronError': {
                'type': 'NotFound', 'message': 'no %s here' % path,
                'detail': ''}})

    def do_DELETE(self):  # noqa: N802
        self._send(404, {'NeutronError': {'type': 'NotFound',
                                          'message': 'nothing here',
                                          'detail': ''}})

    def log_message(self, fmt, *args):
        sys.stdout.write('%s %s\n' % (self.address_string(), fmt % args))
        sys.stdout.flush()


def main() -> None:
    port = int(sys.argv[1])
    server = http.server.ThreadingHTTPServer(('127.0.0.1', port), Handler)
    server.serve_forever()


if __name__ == '__main__':
    main()
