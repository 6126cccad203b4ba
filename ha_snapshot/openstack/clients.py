"""openstacksdk connections built from the [nova] and [glance] groups.

``connection(conf, 'nova')`` gives a Connection whose ``compute`` proxy
goes where [nova] says (keystoneauth session and auth from that group,
``endpoint_override``, ``region_name``, ``interface``);
``connection(conf, 'glance')`` the same for ``image``. One group, one
Connection: the two services may use different credentials or endpoints.
:func:`group_connection` is the part any group with keystoneauth options
shares (the swift storage backend's [swift] too).

The keystoneauth session (and with it the auth plugin's token and the
service version discovery) is built once per group and configuration and
shared by the connections made from it, as Nova's and Cinder's clients of
other services share theirs: a token is fetched when the first call needs
one and again only when it expires or a service refuses it (keystoneauth
re-authenticates once on a 401). Before, every connection fetched a new
token, and the host monitor makes one every check.

May import ha_snapshot.conf.clients and ha_snapshot.exception.
"""

import threading

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from openstack import connection as sdk_connection
from openstack import exceptions as sdk_exc

from ha_snapshot.conf import clients as clients_conf
from ha_snapshot import exception

APP_NAME = 'ha-snapshot'
_SESSIONS = {}
_SESSIONS_LOCK = threading.Lock()
# NOTE: a service has one configuration; a test process makes many.
_MAX_SESSIONS = 64
# NOTE: what a call to another service may raise when that service, the
# network or the credentials fail; anything else is a bug and shows as one.
API_ERRORS = (sdk_exc.SDKException, ks_exc.ClientException)


def error_reason(e: BaseException) -> str:
    """What went wrong in a call to another service, for a message."""
    if isinstance(e, sdk_exc.HttpException):
        details = (e.details or '').strip()
        return 'HTTP %s%s' % (e.status_code,
                              ': ' + details if details else '')
    return '%s: %s' % (type(e).__name__, e)


def connection(conf, group: str) -> sdk_connection.Connection:
    """An openstacksdk Connection for the service of ``group``.

    Raises ConfigurationError naming the group and what is wrong when the
    options cannot make a session (no auth_type, auth_type = none without
    endpoint_override, an unknown plugin, a missing option).
    """
    service = clients_conf.SERVICE_TYPES.get(group)
    if service is None:
        raise exception.ConfigurationError(
            reason='no OpenStack client group [%s]: expected one of %s'
            % (group, ', '.join(sorted(clients_conf.SERVICE_TYPES))))
    # NOTE: idempotent; also done by ha_snapshot.conf.register_opts.
    clients_conf.register_opts(conf)
    return group_connection(conf, group, service,
                            'the %s API URL' % service)


def group_connection(conf, group: str, service: str,
                     endpoint_hint: str) -> sdk_connection.Connection:
    """A Connection from the keystoneauth options of ``[group]``.

    The one way a client of another OpenStack service is built here
    ([nova], [glance] above, [swift] for the object store backend): the
    group must hold keystoneauth's session and auth options plus
    ``endpoint_override``, ``region_name`` and ``interface`` (see
    ha_snapshot.conf.base.register_keystoneauth). ``service`` is the
    openstacksdk service type the endpoint options apply to;
    ``endpoint_hint`` says what endpoint_override must be.
    """
    opts = conf[group]
    try:
        session = _cached(conf, group)
        if session is not None:
            return _connect(session, opts, service)
        auth = ks_loading.load_auth_from_conf_options(conf, group)
        if auth is None:
            raise exception.ConfigurationError(
                reason='[%s] auth_type is not set: set it to a keystoneauth '
                'plugin (e.g. password, with auth_url, username, password, '
                'project_name, user_domain_name, project_domain_name) or to '
                'none with [%s] endpoint_override' % (group, group))
        if opts.auth_type == 'none' and not opts.endpoint_override:
            raise exception.ConfigurationError(
                reason='[%s] auth_type = none needs [%s] endpoint_override '
                '(%s)' % (group, group, endpoint_hint))
        session = _session(conf, group, auth)
        return _connect(session, opts, service)
    except API_ERRORS as e:
        raise exception.ConfigurationError(
            reason='[%s] options: %s: %s' % (group, type(e).__name__, e))


def _connect(session, opts, service) -> sdk_connection.Connection:
    kwargs = {'%s_interface' % service: opts.interface}
    if opts.endpoint_override:
        kwargs['%s_endpoint_override' % service] = opts.endpoint_override
    return sdk_connection.Connection(
        session=session, app_name=APP_NAME,
        region_name=opts.region_name, **kwargs)


def _key(conf, group: str) -> tuple:
    # NOTE: the group's option values are part of the key: a changed
    # option (an override in a test, a reloaded file) makes a new session.
    opts = conf[group]
    return (id(conf), group, tuple(
        (name, repr(getattr(opts, name))) for name in sorted(opts)))


def _cached(conf, group: str):
    with _SESSIONS_LOCK:
        return _SESSIONS.get(_key(conf, group))


def _session(conf, group: str, auth):
    session = ks_loading.load_session_from_conf_options(conf, group,
                                                        auth=auth)
    with _SESSIONS_LOCK:
        while len(_SESSIONS) >= _MAX_SESSIONS:
            del _SESSIONS[next(iter(_SESSIONS))]
        return _SESSIONS.setdefault(_key(conf, group), session)
