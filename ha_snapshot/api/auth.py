"""Who is calling: Keystone (keystonemiddleware) or noauth, then a context.

Three kinds of path:

* public (``/``, the versions document): no identity needed;
* ``/v1/alarms/{server_id}``: Aodh calls it either with a Keystone token
  (``trust+http``) or with a per-server secret in the query string
  (``?secret=``). There keystonemiddleware runs with
  ``delay_auth_decision``: it still strips forged identity headers and
  validates a token if one is sent, but lets the request through without
  a valid one; the alarm handler then requires a valid secret or a
  confirmed identity, and answers 401 otherwise (and logs the refusal).
* everything else: a valid identity or 401.

May import keystonemiddleware, oslo libraries, webob and ha_snapshot.api.
"""

from keystonemiddleware import auth_token
from oslo_log import log as logging
from oslo_middleware import request_id
import webob.dec
import webob.exc

from ha_snapshot.api import context as api_context
from ha_snapshot.api import errors
from ha_snapshot.api import util

LOG = logging.getLogger(__name__)

PUBLIC_PATHS = ('/', '')
ALARM_PREFIX = '/v1/alarms/'

# NOTE: Keystone's default roles imply each other; tokens carry the
# expanded list, so noauth expands it the same way.
IMPLIED_ROLES = {'admin': ('member', 'reader'), 'member': ('reader',)}
IDENTITY_HEADERS = ('HTTP_X_USER_ID', 'HTTP_X_USER', 'HTTP_X_PROJECT_ID',
                    'HTTP_X_TENANT_ID', 'HTTP_X_TENANT', 'HTTP_X_ROLES',
                    'HTTP_X_ROLE', 'HTTP_X_IDENTITY_STATUS',
                    'HTTP_OPENSTACK_SYSTEM_SCOPE', 'HTTP_X_USER_NAME',
                    'HTTP_X_PROJECT_NAME', 'HTTP_X_USER_DOMAIN_ID',
                    'HTTP_X_PROJECT_DOMAIN_ID', 'HTTP_X_SERVICE_ROLES',
                    'HTTP_X_IS_ADMIN_PROJECT')


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS


def is_alarm(path: str) -> bool:
    return path.startswith(ALARM_PREFIX)


def expand_roles(roles) -> list:
    out = []
    for role in roles:
        for r in (role,) + IMPLIED_ROLES.get(role, ()):
            if r and r not in out:
                out.append(r)
    return out


def unauthorized(detail: str):
    return errors.http_error(webob.exc.HTTPUnauthorized, detail,
                             'ha_snapshot.auth.unauthorized')


class NoAuthMiddleware:
    """Identity from headers, trusted as sent: tests and one-host setups.

    ``X-User-Id``, ``X-Project-Id`` and ``X-Roles`` (comma separated), or
    placement's ``X-Auth-Token: USER:PROJECT`` (user ``admin`` gets the
    admin role). Implied roles are added as Keystone would.
    """

    def __init__(self, application):
        self.application = application

    @webob.dec.wsgify
    def __call__(self, req):
        path = req.environ.get('PATH_INFO', '')
        if is_public(path):
            return self.application
        user = req.headers.get('X-User-Id')
        project = req.headers.get('X-Project-Id')
        token = req.headers.get('X-Auth-Token')
        if not user and token:
            user, _sep, token_project = token.partition(':')
            project = project or token_project or user
        if not user:
            if is_alarm(path):
                # NOTE: the alarm handler decides (secret or 401).
                return self.application
            exc = unauthorized(
                'No identity: with [api] auth_strategy = noauth send the '
                'headers X-User-Id, X-Project-Id and X-Roles.')
            errors.prepare(req.environ, exc)
            return exc
        roles = [r.strip() for r in req.headers.get('X-Roles', '').split(',')
                 if r.strip()]
        if not roles and user == 'admin':
            roles = ['admin']
        req.environ['HTTP_X_USER_ID'] = user
        if project:
            req.environ['HTTP_X_PROJECT_ID'] = project
        req.environ['HTTP_X_ROLES'] = ','.join(expand_roles(roles))
        req.environ['HTTP_X_IDENTITY_STATUS'] = 'Confirmed'
        return self.application


class KeystoneAuth:
    """keystonemiddleware's auth_token, strict except where said above."""

    def __init__(self, application, conf):
        self.application = application
        self.strict = auth_token.AuthProtocol(
            application, {'oslo_config_config': conf})
        self.delayed = auth_token.AuthProtocol(
            application, {'oslo_config_config': conf,
                          'delay_auth_decision': True})

    def __call__(self, environ, start_response):
        path = environ.get('PATH_INFO', '')
        if is_public(path):
            # NOTE: nothing downstream may trust identity headers a
            # client sent to a public path.
            for name in IDENTITY_HEADERS:
                environ.pop(name, None)
            return self.application(environ, start_response)
        if is_alarm(path):
            return self.delayed(environ, start_response)
        return self.strict(environ, start_response)


def auth_middleware(conf):
    if conf.api.auth_strategy == 'noauth':
        return NoAuthMiddleware
    return lambda app: KeystoneAuth(app, conf)


class ContextMiddleware:
    """A RequestContext from the identity headers auth left, or 401."""

    def __init__(self, application, enforcer):
        self.application = application
        self.enforcer = enforcer

    @webob.dec.wsgify
    def __call__(self, req):
        ctx = api_context.RequestContext.from_environ(
            req.environ, enforcer=self.enforcer,
            request_id=req.environ.get(request_id.ENV_REQUEST_ID))
        path = req.environ.get('PATH_INFO', '')
        confirmed = req.environ.get(
            'HTTP_X_IDENTITY_STATUS', 'Confirmed') == 'Confirmed'
        if not confirmed or ctx.user_id is None:
            if not (is_public(path) or is_alarm(path)):
                exc = unauthorized('The request carries no valid identity.')
                errors.prepare(req.environ, exc)
                return exc
            ctx = api_context.RequestContext(
                enforcer=self.enforcer, request_id=ctx.request_id)
        req.environ[util.ENVIRON_CONTEXT] = ctx
        return self.application
