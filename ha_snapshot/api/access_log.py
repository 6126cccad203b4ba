"""The access log of ha-snapshot-api: one line per request, in the API.

``CLIENT "METHOD TARGET" status: N len: N time: S.sss`` at INFO on logger
``ha_snapshot.api.access_log``, the same under every server (the embedded
one, uwsgi, gunicorn: run those with their own request logging off). The
target is what the client asked, with the values of secret query
parameters (the alarm URL's ``secret``) replaced by ``***``, control
characters escaped and its length bounded (ha_snapshot.api.log_safety).

May import oslo libraries, the standard library and ha_snapshot.api.
"""

import time
import urllib.parse

from oslo_log import log as logging

from ha_snapshot.api import log_safety

LOG = logging.getLogger(__name__)

SECRET_PARAMS = frozenset(('secret', 'token', 'password', 'auth_token'))
REDACTED = '***'


def redact_query(query: str) -> str:
    """``query`` with the values of secret parameters replaced."""
    if not query:
        return query
    out = []
    for item in query.split('&'):
        name, sep, _value = item.partition('=')
        if urllib.parse.unquote_plus(name).lower() in SECRET_PARAMS:
            item = name + '=' + REDACTED
        out.append(item)
    return '&'.join(out)


def target(environ) -> str:
    """The request target as sent (path and query), secrets redacted."""
    # NOTE: WSGI strings hold the raw bytes as latin-1.
    path = urllib.parse.quote(
        (environ.get('SCRIPT_NAME', '') + environ.get('PATH_INFO', ''))
        .encode('latin-1', 'backslashreplace'),
        safe="/;=,:@!$&'()*+~-._")
    query = redact_query(environ.get('QUERY_STRING', ''))
    return path + ('?' + query if query else '')


class AccessLog:

    def __init__(self, application):
        self.application = application

    def __call__(self, environ, start_response):
        start = time.monotonic()
        seen = {}

        def recording_start_response(status, headers, exc_info=None):
            seen['status'] = status.split(None, 1)[0]
            for name, value in headers:
                if name.lower() == 'content-length':
                    seen['length'] = value
            return start_response(status, headers, exc_info)

        try:
            return self.application(environ, recording_start_response)
        finally:
            LOG.info('%s "%s %s" status: %s len: %s time: %.3f',
                     environ.get('REMOTE_ADDR', '-'),
                     environ.get('REQUEST_METHOD', '-'),
                     log_safety.safe(target(environ)),
                     seen.get('status', '-'), seen.get('length', '-'),
                     time.monotonic() - start)
