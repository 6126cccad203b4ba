"""Error responses of ha-snapshot-api, in the API working group's format.

As placement's::

    {"errors": [{"status": 404, "title": "Not Found", "detail": "...",
                 "code": "ha_snapshot.server.not_found",
                 "request_id": "req-..."}]}

A handler raises a ``webob.exc`` exception made by :func:`http_error`
(the code travels in the exception's ``comment``); :class:`wsgify` moves
the code into the WSGI environment, where :func:`json_error_formatter`
finds it when webob renders the body.

May import webob and oslo libraries only.
"""

from oslo_log import log as logging
from oslo_middleware import request_id
import string

import webob.dec
import webob.exc

LOG = logging.getLogger(__name__)

JSON = 'application/json'
ENV_ERROR_CODE = 'ha_snapshot.error_code'
# NOTE: set by the microversion middleware when it refuses a version, so
# that the error says which versions the service speaks.
ENV_VERSION_RANGE = 'ha_snapshot.version_range'
DEFAULT_ERROR_CODE = 'ha_snapshot.undefined_code'
_DETAIL_ONLY = string.Template('${detail}')


def json_error_formatter(body, status, title, environ) -> dict:
    """webob's json_formatter: the errors document of the API."""
    body = webob.exc.strip_tags(body).strip()
    code = int(status.split(None, 1)[0])
    error = {'status': code, 'title': title, 'detail': body,
             'code': environ.get(ENV_ERROR_CODE, DEFAULT_ERROR_CODE)}
    if request_id.ENV_REQUEST_ID in environ:
        error['request_id'] = environ[request_id.ENV_REQUEST_ID]
    if ENV_VERSION_RANGE in environ:
        error['min_version'], error['max_version'] = (
            environ[ENV_VERSION_RANGE])
    return {'errors': [error]}


def http_error(cls, detail: str, code: str, **kw):
    """A webob HTTP error carrying our JSON body and error ``code``."""
    return cls(detail, comment=code, json_formatter=json_error_formatter,
               **kw)


def prepare(environ, exc) -> None:
    """Make ``exc`` render as our JSON document in this request."""
    exc.json_formatter = json_error_formatter
    # NOTE: webob puts a generic explanation ("The resource could not be
    # found.") before the detail; the detail says it better.
    if exc.detail:
        exc.explanation = ''
        # NOTE: some of webob's classes (405, 406, 415...) have a template
        # that says their own sentence before the detail: say it once.
        exc.body_template_obj = _DETAIL_ONLY
    if exc.comment:
        environ[ENV_ERROR_CODE] = exc.comment
        exc.comment = None
    # NOTE: always JSON, whatever the client said it accepts (a browser's
    # Accept would get webob's HTML page otherwise).
    environ['HTTP_ACCEPT'] = JSON


class wsgify(webob.dec.wsgify):
    """webob's wsgify, with JSON error bodies that carry an error code."""

    def call_func(self, req, *args, **kwargs):
        try:
            return super().call_func(req, *args, **kwargs)
        except webob.exc.HTTPException as exc:
            prepare(req.environ, exc)
            LOG.debug('Returning %s: %s', exc.status, exc.detail)
            raise
