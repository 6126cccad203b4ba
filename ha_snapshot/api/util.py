"""What every handler of ha-snapshot-api shares: JSON bodies in and out,
query parameters, times. Errors are made by :mod:`ha_snapshot.api.errors`.

May import webob, jsonschema, oslo libraries and ha_snapshot.api.errors.
"""

import datetime
import json
import time

import jsonschema
from oslo_utils import uuidutils
import webob
import webob.exc

from ha_snapshot.api import errors

JSON = errors.JSON
http_error = errors.http_error
wsgify = errors.wsgify

# NOTE: where ApiHandler leaves its State and the context middleware the
# RequestContext for the handlers.
ENVIRON_STATE = 'ha_snapshot.state'
ENVIRON_CONTEXT = 'ha_snapshot.context'

_FORMAT_CHECKER = jsonschema.FormatChecker()


@_FORMAT_CHECKER.checks('uuid')
def _is_uuid(value) -> bool:
    return not isinstance(value, str) or uuidutils.is_uuid_like(value)


def extract_json(req: webob.Request, schema: dict, *,
                 empty_ok: bool = False) -> dict:
    """The request body as JSON, validated by ``schema`` (400 otherwise)."""
    if not req.body:
        if empty_ok:
            return {}
        raise http_error(webob.exc.HTTPBadRequest,
                         'The request has no body: a JSON object is '
                         'required.', 'ha_snapshot.body.missing')
    if req.content_type != JSON:
        raise http_error(webob.exc.HTTPUnsupportedMediaType,
                         'The media type %s is not supported, use %s.'
                         % (req.content_type or 'None', JSON),
                         'ha_snapshot.body.media_type')
    try:
        data = json.loads(req.body)
    except ValueError as e:
        raise http_error(webob.exc.HTTPBadRequest,
                         'Malformed JSON: %s' % e, 'ha_snapshot.body.json')
    try:
        jsonschema.validate(data, schema, format_checker=_FORMAT_CHECKER)
    except jsonschema.ValidationError as e:
        where = '/'.join(str(p) for p in e.absolute_path) or '(body)'
        raise http_error(webob.exc.HTTPBadRequest,
                         'JSON does not validate at %s: %s'
                         % (where, e.message), 'ha_snapshot.body.invalid')
    return data


def json_response(req: webob.Request, data, status: int = 200):
    resp = req.response
    resp.status = status
    resp.content_type = JSON
    resp.charset = None
    resp.body = json.dumps(data).encode()
    return resp


def no_content(req: webob.Request):
    resp = req.response
    resp.status = 204
    resp.content_type = None
    return resp


def path_item(environ, name: str):
    """A variable of the matched route (``{server_id}``)."""
    try:
        return environ['wsgiorg.routing_args'][1][name]
    except (KeyError, IndexError):
        return None


def query_bool(req: webob.Request, name: str) -> bool:
    value = req.GET.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ('1', 'true', 'yes', 'on'):
        return True
    if lowered in ('0', 'false', 'no', 'off', ''):
        return False
    raise http_error(webob.exc.HTTPBadRequest,
                     'Query parameter %s=%r is not a boolean (use 1 or 0).'
                     % (name, value), 'ha_snapshot.query.invalid')


def require_uuid(value: str, what: str) -> str:
    if not uuidutils.is_uuid_like(value):
        raise http_error(webob.exc.HTTPNotFound,
                         '%s %r is not a UUID: no such %s.'
                         % (what.capitalize(), value, what),
                         'ha_snapshot.%s.not_found' % what.replace(' ', '_'))
    return value


def isotime(value: datetime.datetime | None) -> str | None:
    """Naive UTC database times as ISO 8601 with a "Z"."""
    if value is None:
        return None
    return value.strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def age(value: datetime.datetime | None, now: float | None = None):
    """Seconds since a naive UTC time (rounded to ms), None for None."""
    if value is None:
        return None
    then = value.replace(tzinfo=datetime.timezone.utc).timestamp()
    return round(max(0.0, (time.time() if now is None else now) - then), 3)


def state(req: webob.Request):
    """The handler.State: conf, database, manager RPC API."""
    return req.environ[ENVIRON_STATE]


def context(req: webob.Request):
    """The api.context.RequestContext of the caller."""
    return req.environ[ENVIRON_CONTEXT]
