"""The embedded HTTP server of ha-snapshot-api: waitress, set up so that
no client can hold what other clients need.

waitress reads every request (line, headers, body; a chunked body is
de-chunked) in one event loop, without a thread per connection, and hands
only complete requests to ``[api] workers`` application threads. An idle
or slow client costs a socket, never a worker; connections idle for
``[api] client_timeout`` are closed, at most ``[api] max_connections`` are
open. The errors waitress answers itself (a request line or headers beyond
its limit, a malformed or too large body) are the API's JSON errors
document, and the ``Server`` header names no version.

May import waitress, oslo libraries and the standard library.
"""

import json
import threading
import time

from oslo_log import log as logging
from waitress import channel as waitress_channel
from waitress import server as waitress_server
from waitress import task as waitress_task
from waitress import wasyncore

LOG = logging.getLogger(__name__)

SERVER_IDENT = 'ha-snapshot'
# NOTE: the error codes of the errors waitress answers by itself.
_CODES = {400: 'ha_snapshot.request.malformed',
          413: 'ha_snapshot.body.too_large',
          431: 'ha_snapshot.request.headers_too_large'}


class _JsonErrorTask(waitress_task.ErrorTask):
    """waitress's own errors, as the API's errors document."""

    def execute(self):
        e = self.request.error
        body = json.dumps({'errors': [{
            'status': e.code, 'title': e.reason,
            'detail': str(e.body).strip(),
            'code': _CODES.get(e.code, 'ha_snapshot.request.invalid')}]})
        self.status = '%d %s' % (e.code, e.reason)
        self.response_headers.append(('Content-Type', 'application/json'))
        self.set_close_on_finish()
        body = body.encode()
        self.content_length = len(body)
        self.write(body)


class _Channel(waitress_channel.HTTPChannel):
    error_task_class = _JsonErrorTask


class EmbeddedServer:
    """waitress serving ``application`` on ``[api] host``/``port``."""

    def __init__(self, application, conf, sock=None):
        """``sock``: a listening socket to serve (one of several processes
        sharing it, ha_snapshot.wsgi.prefork) instead of binding one."""
        api = conf.api
        self.conf = conf
        where = ({'sockets': [sock]} if sock is not None
                 else {'host': api.host, 'port': api.port})
        self.server = waitress_server.create_server(
            application, **where,
            threads=api.workers, connection_limit=api.max_connections,
            channel_timeout=api.client_timeout,
            # NOTE: how often idle channels are looked for; at most half
            # the timeout, so a channel lives < 1.5 client_timeout.
            cleanup_interval=max(1, min(30, api.client_timeout // 2)),
            # NOTE: the hard limits; the API's own, lower ones
            # (api/limits.py) answer first with a precise error.
            max_request_header_size=(api.max_url_length +
                                     api.max_header_size + 1024),
            max_request_body_size=api.max_request_body_size,
            ident=SERVER_IDENT, expose_tracebacks=False,
            # NOTE: select() cannot watch more than 1024 descriptors.
            asyncore_use_poll=True,
            clear_untrusted_proxy_headers=True)
        servers = ([self.server] if hasattr(self.server, 'channel_class')
                   else list(self.server.map.values()))
        for srv in servers:
            if hasattr(srv, 'channel_class'):
                srv.channel_class = _Channel
        self.thread = None

    @property
    def address(self) -> tuple:
        if hasattr(self.server, 'effective_host'):
            return self.server.effective_host, self.server.effective_port
        return self.server.effective_listen[0]

    def _listeners(self):
        if hasattr(self.server, 'accepting'):
            return [self.server]
        return [s for s in self.server.map.values()
                if isinstance(s, waitress_server.BaseWSGIServer)]

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name='api-server',
                                       daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.server.run()
        except Exception:
            LOG.exception('The embedded server stopped on an error')

    def stop(self, timeout: float) -> None:
        """Stop accepting, let running requests finish for at most
        ``timeout`` seconds, then close every connection."""
        for listener in self._listeners():
            listener.accepting = False
        dispatcher = self.server.task_dispatcher
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = dispatcher.active_count or dispatcher.queue
            pending = any(getattr(ch, 'total_outbufs_len', 0)
                          for ch in list(self._map().values()))
            if not busy and not pending:
                break
            time.sleep(0.05)
        else:
            LOG.warning('Requests still running after %s s: closing their '
                        'connections', timeout)
        dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self._map())
        if self.thread is not None:
            self.thread.join(timeout=5)

    def _map(self) -> dict:
        return getattr(self.server, '_map', None) or self.server.map
