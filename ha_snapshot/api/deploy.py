"""The middleware pipeline of ha-snapshot-api, in one place.

:func:`loadapp` is how every caller gets the application: the WSGI module
(ha_snapshot.wsgi.api), the embedded server (ha-snapshot-api) and the
tests (which pass their own database and messaging transport).
"""

from oslo_log import log as logging
from oslo_middleware import healthcheck
from oslo_middleware import http_proxy_to_wsgi
from oslo_middleware import request_id

from ha_snapshot.api import access_log
from ha_snapshot.api import auth
from ha_snapshot.api import fault_wrap
from ha_snapshot.api import handler
from ha_snapshot.api import limits
from ha_snapshot.api import manager_calls
from ha_snapshot.api import microversion
from ha_snapshot.api import policy
from ha_snapshot.db import api as db_api
from ha_snapshot.manager import rpcapi as manager_rpcapi
from ha_snapshot import rpc
from ha_snapshot import rpc_auth

LOG = logging.getLogger(__name__)

HEALTHCHECK_PATH = '/healthcheck'


class _Healthcheck:
    """/healthcheck by oslo.middleware's Healthcheck (an application in
    its own right: it answers every request it is given)."""

    def __init__(self, application, conf):
        self.application = application
        self.healthcheck = healthcheck.Healthcheck(None, conf)

    def __call__(self, environ, start_response):
        if environ.get('PATH_INFO') == HEALTHCHECK_PATH:
            return self.healthcheck(environ, start_response)
        return self.application(environ, start_response)


def deploy(conf, state: handler.State):
    """Wrap the handler in its middleware, outermost last."""
    enforcer = policy.make_enforcer(conf)
    application = handler.ApiHandler(state)
    # NOTE: the order matters; listed from the inside out, so a request
    # meets them bottom-up:
    # - http_proxy_to_wsgi first restores the scheme and host a proxy
    #   saw, so that links (and alarm URLs) point where clients can go;
    # - request_id gives every request (and every error body) its id;
    # - the access log sees every request, with the status it got;
    # - limits refuses what no handler may see (oversized URLs and
    #   headers, control characters in paths, unreadable chunked bodies);
    # - fault_wrap turns any exception below into a JSON 500;
    # - healthcheck answers load balancers before any authentication;
    # - the microversion middleware picks the version and adds its headers
    #   to every response, 401s included;
    # - auth (keystonemiddleware or noauth) checks the caller, then the
    #   context middleware turns the headers it left into a
    #   RequestContext carrying the policy enforcer;
    # - the handler dispatches to the route's function.
    for middleware in (
            lambda app: auth.ContextMiddleware(app, enforcer),
            auth.auth_middleware(conf),
            microversion.MicroversionMiddleware,
            lambda app: _Healthcheck(app, conf),
            fault_wrap.FaultWrapper,
            lambda app: limits.RequestLimits(app, conf),
            access_log.AccessLog,
            lambda app: request_id.RequestId(app, conf),
            lambda app: http_proxy_to_wsgi.HTTPProxyToWSGI(app, conf),
    ):
        application = middleware(application)
    return application


def loadapp(conf, *, db=None, transport=None, manager_api=None):
    """The WSGI application for ``conf`` (a parsed ConfigOpts).

    ``db``, ``transport`` and ``manager_api`` default to what ``conf``
    says ([database], [DEFAULT] transport_url).
    """
    return build(conf, db=db, transport=transport,
                 manager_api=manager_api)[0]


def build(conf, *, db=None, transport=None, manager_api=None):
    """(application, handler.State): as :func:`loadapp`, with the state
    a server stops (``state.manager_api.stop()``) on SIGTERM."""
    if conf.api.auth_strategy == 'noauth' and conf.api.host not in (
            '127.0.0.1', '::1', 'localhost'):
        LOG.warning('[api] auth_strategy = noauth while binding %s: anyone '
                    'who reaches it can act as any user. Use keystone.',
                    conf.api.host)
    brokers = ()
    if manager_api is None:
        if transport is None:
            transport = rpc.get_transport(conf)
            brokers = manager_calls.broker_addresses(conf)
        # NOTE: the API signs as "api" ([rpc_auth] key_file, or derived
        # from master_key_file on the manager's node): the manager takes
        # protect, unprotect, recover and alarm from this identity only.
        manager_api = manager_rpcapi.ManagerAPI(
            transport, timeout=conf.api.rpc_timeout,
            signer=rpc_auth.Signer(rpc_auth.API, rpc_auth.Keys.from_conf(
                conf, rpc_auth.API)))
    calls = manager_calls.ManagerCalls(
        manager_api, conf.api.rpc_timeout, conf.api.rpc_max_pending,
        brokers=brokers, transport=transport)
    calls.start()
    state = handler.State(conf, db or db_api.Database(conf), calls)
    return deploy(conf, state), state
