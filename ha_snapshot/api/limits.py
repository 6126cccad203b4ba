"""What a request must be before any other part of the API looks at it.

Under every WSGI server alike (the embedded one, uwsgi, gunicorn), with
the API's JSON errors:

* a request target longer than ``[api] max_url_length``: 414;
* headers larger than ``[api] max_header_size`` in all: 431;
* a control character in the path (``/v1/servers/ID%0a`` must not be
  server ID), or a query string that is not UTF-8: 400;
* a body without Content-Length (``Transfer-Encoding: chunked``): read
  into memory when the server de-chunked it (``wsgi.input_terminated``;
  413 beyond ``[api] max_request_body_size``), 411 when it did not, so
  that no handler takes a body it cannot read for an empty one.

May import webob, oslo libraries and ha_snapshot.api.errors.
"""

import io
import re
import urllib.parse

import webob.exc

from ha_snapshot.api import errors

_CONTROL = re.compile('[\x00-\x1f\x7f]')


def _refuse(environ, start_response, cls, detail, code):
    exc = errors.http_error(cls, detail, code)
    errors.prepare(environ, exc)
    return exc(environ, start_response)


def header_size(environ) -> int:
    size = 0
    for key, value in environ.items():
        if key.startswith('HTTP_') or key in ('CONTENT_TYPE',
                                              'CONTENT_LENGTH'):
            size += len(key) + len(str(value)) + 4
    return size


def target_length(environ) -> int:
    raw = environ.get('RAW_URI') or environ.get('REQUEST_URI')
    if raw:
        return len(raw)
    query = environ.get('QUERY_STRING', '')
    return (len(environ.get('SCRIPT_NAME', '') + environ.get('PATH_INFO', ''))
            + (len(query) + 1 if query else 0))


def _utf8(query: str) -> bool:
    # NOTE: webob decodes parameters as UTF-8 when a handler reads them;
    # "?status=%ff" was a UnicodeDecodeError there, and a 500.
    try:
        urllib.parse.unquote_to_bytes(query.replace('+', ' ')).decode(
            'utf-8')
    except UnicodeDecodeError:
        return False
    return True


class RequestLimits:

    def __init__(self, application, conf):
        self.application = application
        self.conf = conf

    def __call__(self, environ, start_response):
        api = self.conf.api
        length = target_length(environ)
        if length > api.max_url_length:
            return _refuse(
                environ, start_response, webob.exc.HTTPRequestURITooLong,
                'The request target has %d characters; at most %d are '
                'accepted ([api] max_url_length).'
                % (length, api.max_url_length), 'ha_snapshot.url.too_long')
        size = header_size(environ)
        if size > api.max_header_size:
            return _refuse(
                environ, start_response,
                webob.exc.HTTPRequestHeaderFieldsTooLarge,
                'The request headers have %d bytes; at most %d are '
                'accepted ([api] max_header_size).'
                % (size, api.max_header_size),
                'ha_snapshot.request.headers_too_large')
        if _CONTROL.search(environ.get('PATH_INFO', '')):
            return _refuse(
                environ, start_response, webob.exc.HTTPBadRequest,
                'The path contains a control character (such as %0a): no '
                'resource has one.', 'ha_snapshot.url.invalid')
        if not _utf8(environ.get('QUERY_STRING', '')):
            return _refuse(
                environ, start_response, webob.exc.HTTPBadRequest,
                'The query string is not UTF-8 once percent-decoded.',
                'ha_snapshot.query.invalid')
        if environ.get('HTTP_TRANSFER_ENCODING'):
            refusal = self._read_chunked(environ)
            if refusal is not None:
                return _refuse(environ, start_response, *refusal)
        return self.application(environ, start_response)

    def _read_chunked(self, environ):
        """Buffer a body sent without Content-Length; a refusal or None."""
        if environ.get('CONTENT_LENGTH'):
            # NOTE: a server that de-chunked the body may have set the
            # length it found; with both headers from a client, RFC 9112
            # says the length is ignored, and servers drop it.
            return None
        if not environ.get('wsgi.input_terminated'):
            return (webob.exc.HTTPLengthRequired,
                    'This server cannot read a body without Content-Length '
                    '(Transfer-Encoding: %s): send Content-Length.'
                    % environ['HTTP_TRANSFER_ENCODING'],
                    'ha_snapshot.body.length_required')
        limit = self.conf.api.max_request_body_size
        body = environ['wsgi.input'].read(limit + 1)
        if len(body) > limit:
            return (webob.exc.HTTPRequestEntityTooLarge,
                    'The request body has more than %d bytes ([api] '
                    'max_request_body_size).' % limit,
                    'ha_snapshot.body.too_large')
        environ['wsgi.input'] = io.BytesIO(body)
        environ['CONTENT_LENGTH'] = str(len(body))
        return None
