"""/v1/servers: protected servers (list, show, protect, unprotect)."""

import json

from oslo_log import log as logging
import webob.exc

from ha_snapshot.api import endpoint
from ha_snapshot.api.schemas import server as schema
from ha_snapshot.api import secret as alarm_secret
from ha_snapshot.api import util
from ha_snapshot import exception
from ha_snapshot.policies import server as server_policies
from ha_snapshot import policy as snapshot_policy
from ha_snapshot.statuses import INSTANCE_STATUSES

LOG = logging.getLogger(__name__)


def not_found(server_id: str):
    return util.http_error(
        webob.exc.HTTPNotFound,
        'Server %s is not protected (or not visible to you).' % server_id,
        'ha_snapshot.server.not_found')


def find_server(req, server_id: str, action: str | None = None):
    """The server's row, if the caller may see it (404 otherwise) and may
    do ``action`` on it (403 otherwise)."""
    ctx = util.context(req)
    util.require_uuid(server_id, 'server')
    try:
        row = util.state(req).db.get_instance(server_id)
    except exception.InstanceNotFound:
        raise not_found(server_id)
    target = {'project_id': row.project_id}
    # NOTE: a server of another project is "not found", as in Nova: its
    # existence is not the caller's business.
    if not ctx.can(server_policies.SHOW, target, fatal=False):
        raise not_found(server_id)
    if action is not None:
        ctx.can(action, target)
    return row


def _may_protect(req, project_id) -> bool:
    """Policy PROTECT on a project, checked once per request and project
    (an oslo.policy check costs ~1 ms: per row, it made a list of 100
    servers take 100+ ms of CPU)."""
    cache = req.environ.setdefault('ha_snapshot.may_protect', {})
    if project_id not in cache:
        cache[project_id] = util.context(req).can(
            server_policies.PROTECT, {'project_id': project_id},
            fatal=False)
    return cache[project_id]


def server_view(req, row) -> dict:
    out = {
        'id': row.uuid,
        'project_id': row.project_id,
        'host': row.host,
        'status': row.status,
        'policy': row.policy,
        'driver': row.driver,
        'created_at': util.isotime(row.created_at),
        'updated_at': util.isotime(row.updated_at),
        'newest_restore_point_id': row.newest_restore_point_id,
        'newest_restore_point_at': util.isotime(row.newest_restore_point_at),
        'rpo_seconds': util.age(row.newest_restore_point_at),
        'recovery_attempts': row.recovery_attempts,
        'last_report_reason': row.last_report_reason,
    }
    url = _alarm_url_maker(req)
    if url is not None and _may_protect(req, row.project_id):
        out['alarm_url'] = url(row.uuid)
    return out


def _alarm_url_maker(req):
    """``server id -> alarm URL`` (None without an alarm key or public
    URL), made once per request: reading options is not free either,
    and a list shows many servers."""
    environ = req.environ
    if 'ha_snapshot.alarm_url' not in environ:
        conf = util.state(req).conf
        key = conf.api.alarm_secret_key
        # NOTE: never from the request's Host header (see api/endpoint).
        base = endpoint.public_url(conf, environ) if key else None
        environ['ha_snapshot.alarm_url'] = (
            alarm_secret.alarm_urls(base, key)
            if key and base is not None else None)
    return environ['ha_snapshot.alarm_url']


def _statuses(req):
    text = req.GET.get('status')
    if text is None:
        return None
    statuses = [s.strip() for s in text.split(',') if s.strip()]
    bad = [s for s in statuses if s not in INSTANCE_STATUSES]
    if bad or not statuses:
        raise util.http_error(
            webob.exc.HTTPBadRequest,
            'Unknown status %r: expected one or more (comma separated) of '
            '%s.' % (', '.join(bad) or text,
                     ', '.join(INSTANCE_STATUSES)),
            'ha_snapshot.query.invalid')
    return statuses


@util.wsgify
def list_servers(req):
    ctx = util.context(req)
    all_projects = util.query_bool(req, 'all_projects')
    project = req.GET.get('project_id') or None
    if all_projects or (project is not None and project != ctx.project_id):
        ctx.can(server_policies.LIST_ALL_PROJECTS,
                {'project_id': project or ctx.project_id})
    else:
        ctx.can(server_policies.LIST)
        if ctx.project_id is None:
            raise util.http_error(
                webob.exc.HTTPBadRequest,
                'The request is not scoped to a project: use a project '
                'token, or all_projects=1 as an admin.',
                'ha_snapshot.query.invalid')
        project = ctx.project_id
    rows = util.state(req).db.list_instances(project=project,
                                             status=_statuses(req))
    return util.json_response(
        req, {'servers': [server_view(req, r) for r in rows]})


NOT_PROTECTED = ('attached volumes (Cinder backup protects them); '
                 'read-only disks (config drives)')


def _disks(req, row) -> dict:
    """What the newest restore point covers ("vda (root)", ...; null
    before the first), and what is never protected."""
    points = util.state(req).db.list_restore_points(row.uuid)
    disks = None
    if points and points[-1].disks:
        disks = ['%s (%s)' % (d['target'], d['role'])
                 for d in json.loads(points[-1].disks)]
    elif points:
        disks = ['root disk']
    return {'disks_protected': disks, 'not_protected': NOT_PROTECTED}


@util.wsgify
def show_server(req):
    row = find_server(req, util.path_item(req.environ, 'server_id'))
    view = server_view(req, row)
    view.update(_disks(req, row))
    return util.json_response(req, {'server': view})


def _check_policy_name(name):
    if name is None:
        return
    available = snapshot_policy.available_policies()
    if name not in available:
        raise util.http_error(
            webob.exc.HTTPBadRequest,
            'Unknown snapshot policy %r: expected one of %s.'
            % (name, ', '.join(available) or '(none installed)'),
            'ha_snapshot.policy_name.invalid')


@util.wsgify
def protect_server(req):
    server_id = util.path_item(req.environ, 'server_id')
    body = util.extract_json(req, schema.PROTECT, empty_ok=True)
    ctx = util.context(req)
    st = util.state(req)
    util.require_uuid(server_id, 'server')
    try:
        row = st.db.get_instance(server_id)
    except exception.InstanceNotFound:
        row = None
    asked = body.get('project_id')
    if row is not None:
        if not ctx.can(server_policies.SHOW,
                       {'project_id': row.project_id}, fatal=False):
            raise not_found(server_id)
        project = row.project_id
        if asked is not None and asked != project:
            raise util.http_error(
                webob.exc.HTTPConflict,
                'Server %s is recorded for project %s, not %s.'
                % (server_id, project, asked), 'ha_snapshot.server.conflict')
    elif asked is not None:
        project = asked
    elif ctx.can(server_policies.LIST_ALL_PROJECTS,
                 {'project_id': ctx.project_id}, fatal=False):
        # NOTE: an admin may protect any project's server: Nova says whose.
        project = None if body.get('host') is None else ctx.project_id
    else:
        project = ctx.project_id
    target = {'project_id': project or ctx.project_id}
    if (body.get('host') is not None or
            (asked is not None and asked != ctx.project_id)):
        ctx.can(server_policies.PROTECT_HOST, target)
    ctx.can(server_policies.PROTECT, target)
    _check_policy_name(body.get('policy'))
    result = st.manager_api.protect(server_id, project,
                                    host=body.get('host'),
                                    policy=body.get('policy'))
    LOG.info('Protect %s (project %s) by user %s: %s', server_id,
             result.get('project'), ctx.user_id, result.get('result'))
    row = st.db.get_instance(server_id)
    return util.json_response(req, {'server': server_view(req, row)},
                              status=202 if result.get('cast') else 200)


@util.wsgify
def unprotect_server(req):
    row = find_server(req, util.path_item(req.environ, 'server_id'),
                      server_policies.UNPROTECT)
    util.state(req).manager_api.unprotect(row.uuid)
    LOG.info('Unprotect %s by user %s', row.uuid,
             util.context(req).user_id)
    return util.no_content(req)
