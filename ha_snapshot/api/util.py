"""What every handler of ha-snapshot-api shares: JSON bodies in and out,
query parameters, times. Errors are made by :mod:`ha_snapshot.api.errors`.

May import webob, jsonschema, oslo libraries and ha_snapshot.api.errors.
"""

import datetime
import json
import threading
import time
import uuid

import jsonschema
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


# NOTE: deeper JSON is refused before it is parsed: json and jsonschema
# recurse once per level (a 2 KB body of 1,000 nested arrays was a
# RecursionError), and no body of this API nests more than a few levels.
MAX_JSON_DEPTH = 32


def is_uuid(value) -> bool:
    """A UUID in its one canonical form (lower case, hyphens), so that
    one server has one id: uuidutils also takes upper case, braces,
    "urn:uuid:" and no hyphens, and each would name the same server
    differently."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@_FORMAT_CHECKER.checks('uuid')
def _is_uuid(value) -> bool:
    return not isinstance(value, str) or is_uuid(value)


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (strings are
    skipped), without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5c:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5b, 0x7b):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5d, 0x7d):
            depth -= 1
    return deepest


def _no_constant(name):
    raise ValueError('%s is not valid JSON' % name)


def _check_text(data, path=()):
    """Refuse strings that cannot be stored or logged (lone surrogates)."""
    stack = [(data, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode('utf-8')
            except UnicodeEncodeError:
                raise http_error(
                    webob.exc.HTTPBadRequest,
                    'JSON does not validate at %s: the string is not valid '
                    'Unicode (a lone surrogate).'
                    % ('/'.join(map(str, where)) or '(body)'),
                    'ha_snapshot.body.invalid')
        elif isinstance(item, dict):
            for key, value in item.items():
                stack.append((key, where))
                stack.append((value, where + (key,)))
        elif isinstance(item, list):
            stack.extend((v, where + (i,)) for i, v in enumerate(item))


_VALIDATORS = {}
_MAX_VALIDATORS = 64
_VALIDATORS_LOCK = threading.Lock()


def validator_for(schema: dict):
    """The validator of ``schema``, made (and the schema itself checked)
    once: jsonschema.validate() checks the schema against its meta-schema
    at every call, which was a tenth of the API's CPU under load."""
    cached = _VALIDATORS.get(id(schema))
    # NOTE: the schema is kept with its validator, so that its id cannot
    # be reused by another dict while the entry lives.
    if cached is not None and cached[0] is schema:
        return cached[1]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=_FORMAT_CHECKER)
    with _VALIDATORS_LOCK:
        if len(_VALIDATORS) >= _MAX_VALIDATORS:
            # NOTE: the route schemas are module constants; a caller
            # building schemas per request must not grow this for ever.
            _VALIDATORS.clear()
        _VALIDATORS[id(schema)] = (schema, validator)
    return validator


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
    body = req.body
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise http_error(webob.exc.HTTPBadRequest,
                         'The JSON body nests %d levels deep; at most %d '
                         'are accepted.' % (depth, MAX_JSON_DEPTH),
                         'ha_snapshot.body.json')
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise http_error(webob.exc.HTTPBadRequest,
                         'Malformed JSON: %s' % e, 'ha_snapshot.body.json')
    _check_text(data)
    e = jsonschema.exceptions.best_match(
        validator_for(schema).iter_errors(data))
    if e is not None:
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
    if not is_uuid(value):
        raise http_error(webob.exc.HTTPNotFound,
                         '%s %r is not a UUID: no such %s.'
                         % (what.capitalize(), value, what),
                         'ha_snapshot.%s.not_found' % what.replace(' ', '_'))
    return value


def isotime(value: datetime.datetime | None) -> str | None:
    """Naive UTC database times as ISO 8601 with a "Z"."""
    if value is None:
        return None
    # NOTE: the same text as strftime('%Y-%m-%dT%H:%M:%S.%fZ') for naive
    # times, in half its time (a list shows three per server).
    return value.isoformat(timespec='microseconds') + 'Z'


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
