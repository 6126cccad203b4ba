"""ha-snapshot-api: the REST API on the embedded server (one host).

waitress (ha_snapshot.wsgi.embedded) bound to ``[api] host`` and ``port``:
idle and slow clients cost a socket, never one of the ``[api] workers``
application threads. With more than one of ``[api] processes`` (default:
one per CPU), a parent binds the socket and forks that many servers
sharing it (ha_snapshot.wsgi.prefork). SIGTERM stops it within
``[api] shutdown_timeout`` seconds plus a little, whatever the message
bus does. For a cloud, serve ha_snapshot.wsgi.api under uwsgi or gunicorn
instead (the devstack plugin runs it under uwsgi).
"""

import sys

from oslo_log import log as logging

from ha_snapshot.api import deploy
from ha_snapshot.api import log_safety
from ha_snapshot.api import policy
from ha_snapshot.cmd import common
from ha_snapshot import service
from ha_snapshot.wsgi import embedded
from ha_snapshot.wsgi import prefork

LOG = logging.getLogger(__name__)


class ApiService(service.Service):

    name = 'ha-snapshot-api'

    def __init__(self, conf, application=None, sock=None):
        self.conf = conf
        self.application = application
        self.sock = sock
        self.state = None
        self.server = None

    def start(self) -> None:
        app = self.application
        if app is None:
            app, self.state = deploy.build(self.conf)
        self.server = embedded.EmbeddedServer(app, self.conf, self.sock)
        self.server.start()
        host, port = self.server.address[:2]
        LOG.info('ha-snapshot-api listening on http://%s:%s (%s auth, %d '
                 'workers)', host, port, self.conf.api.auth_strategy,
                 self.conf.api.workers)

    def stop(self) -> None:
        if self.state is not None:
            # NOTE: requests waiting for the manager answer 503 now.
            self.state.manager_api.stop()
        if self.server is not None:
            self.server.stop(self.conf.api.shutdown_timeout)


def main(argv=None) -> int:
    conf = common.prepare(argv)
    log_safety.install()
    policy.set_defaults(conf)
    processes = prefork.worker_count(conf)
    if processes == 1:
        return service.run(ApiService(conf), conf)
    sock = prefork.listen(conf.api.host, conf.api.port)
    LOG.info('ha-snapshot-api: %d processes on http://%s:%d', processes,
             conf.api.host, sock.getsockname()[1])
    return prefork.Prefork(
        sock, processes,
        lambda sock: service.run(ApiService(conf, sock=sock), conf),
        shutdown_timeout=conf.api.shutdown_timeout).run()


if __name__ == '__main__':
    sys.exit(main())
