"""ha-snapshot-api: the REST API on the embedded server.

A threaded WSGI server from the standard library, bound to ``[api] host``
and ``port``, ``[api] workers`` requests at a time. For production behind
a real WSGI server use ha_snapshot.wsgi.api instead.
"""

import concurrent.futures
import sys
import threading
from wsgiref import simple_server

from oslo_log import log as logging

from ha_snapshot.api import deploy
from ha_snapshot.api import policy
from ha_snapshot.cmd import common
from ha_snapshot import service

LOG = logging.getLogger(__name__)


class _Handler(simple_server.WSGIRequestHandler):

    def log_message(self, fmt, *args):
        LOG.info('%s %s', self.address_string(), fmt % args)


class PooledWSGIServer(simple_server.WSGIServer):
    """wsgiref's server with a bounded pool of request threads."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address, workers: int):
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix='api')
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self):
        super().server_close()
        self.pool.shutdown(wait=True, cancel_futures=True)


class ApiService(service.Service):

    name = 'ha-snapshot-api'

    def __init__(self, conf, application=None):
        self.conf = conf
        self.application = application
        self.server = None
        self.thread = None

    def start(self) -> None:
        app = self.application or deploy.loadapp(self.conf)
        self.server = PooledWSGIServer((self.conf.api.host,
                                        self.conf.api.port),
                                       self.conf.api.workers)
        self.server.set_app(app)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       name='api-server', daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        LOG.info('ha-snapshot-api listening on http://%s:%s (%s auth)',
                 host, port, self.conf.api.auth_strategy)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=30)


def main(argv=None) -> int:
    conf = common.prepare(argv)
    policy.set_defaults(conf)
    return service.run(ApiService(conf), conf)


if __name__ == '__main__':
    sys.exit(main())
