"""The routes of ha-snapshot-api, declared once, and their dispatch.

``ROUTE_DECLARATIONS`` maps each Routes path to ``{METHOD: handler}``;
handlers are plain functions ``handler(req)`` in ``handlers/<noun>.py``.
A path that exists with another method gets 405 with an ``Allow`` header;
an unknown path gets 404. Path variables are never constrained by regular
expressions here: a bad id reaches its handler, which says what is wrong.

Errors of the layers below (database, manager over RPC) that escape a
handler are turned into HTTP errors in one place, :func:`translate`.
"""

import oslo_messaging as messaging
import routes
import webob.exc

from ha_snapshot.api import errors
from ha_snapshot.api.handlers import alarm
from ha_snapshot.api.handlers import host_failure
from ha_snapshot.api.handlers import manager
from ha_snapshot.api.handlers import metrics
from ha_snapshot.api.handlers import recovery
from ha_snapshot.api.handlers import restore_point
from ha_snapshot.api.handlers import root
from ha_snapshot.api.handlers import server
from ha_snapshot.api import util
from ha_snapshot import exception

ROUTE_DECLARATIONS = {
    '/': {'GET': root.home},
    # NOTE: lets '/ha-snapshot/' and '/ha-snapshot' both be the root when
    # the service is mounted under a prefix.
    '': {'GET': root.home},
    '/v1/servers': {'GET': server.list_servers},
    '/v1/servers/{server_id}': {
        'GET': server.show_server,
        'PUT': server.protect_server,
        'DELETE': server.unprotect_server,
    },
    '/v1/servers/{server_id}/restore-points': {
        'GET': restore_point.list_restore_points,
    },
    '/v1/servers/{server_id}/recoveries': {
        'GET': recovery.list_recoveries,
        'POST': recovery.create_recovery,
    },
    '/v1/servers/{server_id}/recoveries/{recovery_id}': {
        'GET': recovery.show_recovery,
    },
    '/v1/alarms/{server_id}': {'POST': alarm.post_alarm},
    '/v1/managers': {'GET': manager.list_managers},
    '/v1/host-failures': {'GET': host_failure.list_host_failures},
    '/v1/host-failures/{failure_id}': {
        'GET': host_failure.show_host_failure,
    },
    '/metrics': {'GET': metrics.show_metrics},
}

# NOTE: the routes of these methods read no body: one sent is refused
# rather than silently ignored.
BODYLESS_METHODS = ('GET', 'HEAD', 'DELETE')

# NOTE: what the layers below may raise, as (class, HTTP error, code);
# the first match wins, so subclasses come before their bases.
_TRANSLATIONS = (
    (exception.ManagerTimeout, webob.exc.HTTPGatewayTimeout,
     'ha_snapshot.manager.timeout'),
    (exception.ManagerCallFailed, webob.exc.HTTPServiceUnavailable,
     'ha_snapshot.manager.unavailable'),
    (exception.ApiStopping, webob.exc.HTTPServiceUnavailable,
     'ha_snapshot.api.stopping'),
    (exception.RecoveryConflict, webob.exc.HTTPConflict,
     'ha_snapshot.recovery.conflict'),
    (exception.OpenStackError, webob.exc.HTTPBadGateway,
     'ha_snapshot.openstack.error'),
    (exception.RestorePointNotFound, webob.exc.HTTPNotFound,
     'ha_snapshot.restore_point.not_found'),
    (exception.InstanceNotFound, webob.exc.HTTPNotFound,
     'ha_snapshot.server.not_found'),
    (exception.RecoveryNotFound, webob.exc.HTTPNotFound,
     'ha_snapshot.recovery.not_found'),
    (exception.HostFailureNotFound, webob.exc.HTTPNotFound,
     'ha_snapshot.host_failure.not_found'),
    (exception.InstanceConflict, webob.exc.HTTPConflict,
     'ha_snapshot.server.conflict'),
    (exception.InstanceStatusConflict, webob.exc.HTTPConflict,
     'ha_snapshot.server.conflict'),
    (exception.PolicyNotFound, webob.exc.HTTPBadRequest,
     'ha_snapshot.policy_name.invalid'),
    (exception.InvalidStatus, webob.exc.HTTPBadRequest,
     'ha_snapshot.query.invalid'),
    (exception.ConfigurationError, webob.exc.HTTPServiceUnavailable,
     'ha_snapshot.configuration'),
)


class State:
    """What the handlers work with, built once by deploy.loadapp()."""

    def __init__(self, conf, db, manager_api):
        self.conf = conf
        self.db = db
        self.manager_api = manager_api


def translate(e: Exception):
    """An HTTP error for an error of the database or the manager."""
    for cls, http, code in _TRANSLATIONS:
        if isinstance(e, cls):
            return errors.http_error(http, str(e.message if isinstance(
                e, exception.HaSnapshotException) else e), code)
    if isinstance(e, messaging.MessagingTimeout):
        return errors.http_error(
            webob.exc.HTTPGatewayTimeout,
            'The manager did not answer in time (is ha-snapshot-manager '
            'running?): %s' % e, 'ha_snapshot.manager.timeout')
    if isinstance(e, messaging.MessagingException):
        return errors.http_error(
            webob.exc.HTTPServiceUnavailable,
            'The manager cannot be reached over the message bus: %s' % e,
            'ha_snapshot.manager.unavailable')
    if isinstance(e, exception.HaSnapshotException):
        return errors.http_error(webob.exc.HTTPBadRequest, e.message,
                                 'ha_snapshot.refused')
    return None


def dispatch(environ, start_response, mapper):
    result = mapper.match(environ=environ)
    if result is None:
        raise errors.http_error(
            webob.exc.HTTPNotFound,
            'The resource %s could not be found.' % environ.get('PATH_INFO'),
            'ha_snapshot.route.not_found')
    handler = result.pop('action')
    environ['wsgiorg.routing_args'] = ((), result)
    return handler(environ, start_response)


def handle_405(environ, start_response):
    methods = environ['wsgiorg.routing_args'][1].get('_methods', '')
    exc = errors.http_error(
        webob.exc.HTTPMethodNotAllowed,
        'The method %s is not allowed for this resource (allowed: %s).'
        % (environ.get('REQUEST_METHOD'), methods),
        'ha_snapshot.method.not_allowed', headers={'Allow': methods})
    errors.prepare(environ, exc)
    return exc(environ, start_response)


def make_map(declarations) -> routes.Mapper:
    mapper = routes.Mapper()
    for route, targets in declarations.items():
        targets = dict(targets)
        # NOTE: HEAD is GET without the body (webob's Response leaves the
        # body out and keeps the headers), as RFC 9110 wants of a GET.
        if 'GET' in targets:
            targets.setdefault('HEAD', targets['GET'])
        for method, handler in targets.items():
            mapper.connect(route, action=handler,
                           conditions={'method': [method]})
        mapper.connect(route, action=handle_405,
                       _methods=', '.join(targets))
    return mapper


class ApiHandler:
    """The innermost WSGI application: checks, then the route's handler."""

    def __init__(self, state: State):
        self.state = state
        self._map = make_map(ROUTE_DECLARATIONS)

    def __call__(self, environ, start_response):
        environ[util.ENVIRON_STATE] = self.state
        try:
            self._check_body(environ)
            return dispatch(environ, start_response, self._map)
        except webob.exc.HTTPException as exc:
            errors.prepare(environ, exc)
            return exc(environ, start_response)
        except Exception as e:
            exc = translate(e)
            if exc is None:
                raise
            errors.prepare(environ, exc)
            return exc(environ, start_response)

    def _check_body(self, environ) -> None:
        length = environ.get('CONTENT_LENGTH')
        if not length:
            return
        try:
            length = int(length)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            raise errors.http_error(webob.exc.HTTPBadRequest,
                                    'Content-Length must be a non-negative '
                                    'integer.', 'ha_snapshot.body.length')
        method = environ.get('REQUEST_METHOD')
        if length > 0 and method in BODYLESS_METHODS:
            raise errors.http_error(
                webob.exc.HTTPBadRequest,
                'A %s request takes no body here; this one has %d bytes.'
                % (method, length), 'ha_snapshot.body.unexpected')
        limit = self.state.conf.api.max_request_body_size
        if length > limit:
            raise errors.http_error(
                webob.exc.HTTPRequestEntityTooLarge,
                'The request body has %d bytes; at most %d are accepted '
                '([api] max_request_body_size).' % (length, limit),
                'ha_snapshot.body.too_large')
        if length > 0 and not environ.get('CONTENT_TYPE'):
            raise errors.http_error(
                webob.exc.HTTPBadRequest,
                'A Content-Type header is required with a body.',
                'ha_snapshot.body.media_type')

