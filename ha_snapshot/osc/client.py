"""A small client of the ha-snapshot REST API over a keystoneauth session.

One method per route of the API (CONTRACTS: REST API); each returns the
decoded JSON document's payload (a dict or a list of dicts). Every request
carries ``OpenStack-API-Version: ha-snapshot X.Y``. An error answer becomes
:class:`~ha_snapshot.exception.ApiError` whose message is the API's own
``detail`` plus the status, error code and request id, so that the
operator reads what is wrong, not a traceback; a connection failure becomes
:class:`~ha_snapshot.exception.ApiUnreachable` naming the URL.

May import keystoneauth1 and ha_snapshot.exception only.
"""

import urllib.parse

from keystoneauth1 import exceptions as ksa_exc

from ha_snapshot import exception

SERVICE_TYPE = 'ha-snapshot'
LATEST_VERSION = '1.0'
VERSION_HEADER = 'OpenStack-API-Version'

# NOTE: what to add to the API's own words for statuses whose usual cause
# is on the operator's side rather than in the request.
_HINTS = {
    401: 'the API did not accept the credentials: check the token or '
         'the auth options',
    403: 'the policy of the API does not allow this to your project or '
         'role',
    406: 'the API does not serve this microversion: choose another with '
         '--os-ha-snapshot-api-version',
}


def _quote(value: str) -> str:
    return urllib.parse.quote(str(value), safe='')


class Client:
    """The ha-snapshot API at ``endpoint``, through ``session``."""

    def __init__(self, session, endpoint: str,
                 api_version: str = LATEST_VERSION):
        self.session = session
        self.endpoint = endpoint.rstrip('/')
        self.api_version = api_version

    # --- transport ----------------------------------------------------------

    def request(self, method: str, path: str, *, body: dict | None = None,
                params: dict | None = None):
        """One request; the decoded JSON body (None for an empty one)."""
        url = self.endpoint + path
        headers = {VERSION_HEADER: '%s %s' % (SERVICE_TYPE, self.api_version),
                   'Accept': 'application/json'}
        kwargs = {'headers': headers, 'raise_exc': False}
        if body is not None:
            kwargs['json'] = body
        if params:
            kwargs['params'] = params
        try:
            resp = self.session.request(url, method, **kwargs)
        except (ksa_exc.ConnectionError, ksa_exc.RequestTimeout) as e:
            raise exception.ApiUnreachable(url=url, reason=e) from e
        if resp.status_code >= 400:
            raise self._error(method, url, resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise exception.ClientError(
                reason='%s %s answered HTTP %s with a body that is not '
                       'JSON: %.200r' % (method, url, resp.status_code,
                                         resp.text)) from e

    def _payload(self, method: str, path: str, key: str, **kwargs):
        doc = self.request(method, path, **kwargs)
        if not isinstance(doc, dict) or key not in doc:
            raise exception.ClientError(
                reason='%s %s%s answered without "%s": is %s the '
                       'ha-snapshot API?' % (method, self.endpoint, path, key,
                                             self.endpoint))
        return doc[key]

    @staticmethod
    def _error(method: str, url: str, resp) -> exception.ApiError:
        status = resp.status_code
        reason = getattr(resp, 'reason', '') or ''
        errors = None
        try:
            errors = resp.json().get('errors')
        except (ValueError, AttributeError):
            pass
        if errors and isinstance(errors, list) and isinstance(errors[0],
                                                               dict):
            first = errors[0]
            detail = first.get('detail') or first.get('title') or reason
            code = first.get('code')
            request_id = first.get('request_id')
        else:
            # NOTE: not the API's error document (a proxy, a web server in
            # front of it): say what answered, briefly.
            text = (resp.text or '').strip().replace('\n', ' ')
            detail = '%s %s failed: %s' % (method, url, text[:200] or reason)
            code = None
            request_id = resp.headers.get('x-openstack-request-id')
        extra = ' %s' % reason if reason else ''
        if code:
            extra += ', code %s' % code
        if request_id:
            extra += ', request %s' % request_id
        hint = _HINTS.get(status)
        if hint:
            detail = '%s; %s' % (str(detail).rstrip('. '), hint)
        return exception.ApiError(detail=detail, status=status, extra=extra,
                                  code=code, request_id=request_id)

    # --- servers ------------------------------------------------------------

    def list_servers(self, *, all_projects: bool = False,
                     project_id: str | None = None,
                     status: str | None = None) -> list:
        params = {}
        if all_projects:
            params['all_projects'] = '1'
        if project_id:
            params['project_id'] = project_id
        if status:
            params['status'] = status
        return self._payload('GET', '/v1/servers', 'servers', params=params)

    def get_server(self, server_id: str) -> dict:
        return self._payload('GET', '/v1/servers/%s' % _quote(server_id),
                             'server')

    def protect(self, server_id: str, *, policy: str | None = None,
                host: str | None = None) -> dict:
        body = {}
        if policy is not None:
            body['policy'] = policy
        if host is not None:
            body['host'] = host
        return self._payload('PUT', '/v1/servers/%s' % _quote(server_id),
                             'server', body=body)

    def unprotect(self, server_id: str) -> None:
        self.request('DELETE', '/v1/servers/%s' % _quote(server_id))

    # --- restore points and recoveries --------------------------------------

    def list_restore_points(self, server_id: str) -> list:
        return self._payload(
            'GET', '/v1/servers/%s/restore-points' % _quote(server_id),
            'restore_points')

    def create_recovery(self, server_id: str,
                        restore_point_id: str | None = None,
                        consistency: str | None = None) -> dict:
        """``consistency='filesystem'``: the newest application-consistent
        restore point."""
        body = {}
        if restore_point_id is not None:
            body['restore_point_id'] = restore_point_id
        if consistency is not None:
            body['consistency'] = consistency
        return self._payload(
            'POST', '/v1/servers/%s/recoveries' % _quote(server_id),
            'recovery', body=body)

    def list_recoveries(self, server_id: str) -> list:
        return self._payload(
            'GET', '/v1/servers/%s/recoveries' % _quote(server_id),
            'recoveries')

    def get_recovery(self, server_id: str, recovery_id: str) -> dict:
        return self._payload(
            'GET', '/v1/servers/%s/recoveries/%s' % (
                _quote(server_id), _quote(recovery_id)), 'recovery')

    # --- manager replicas ---------------------------------------------------

    def list_managers(self) -> list:
        return self._payload('GET', '/v1/managers', 'managers')

    # --- compute host failures ----------------------------------------------

    def list_host_failures(self, host: str | None = None,
                           open_only: bool = False) -> list:
        params = {}
        if host:
            params['host'] = host
        if open_only:
            params['open'] = '1'
        return self._payload('GET', '/v1/host-failures', 'host_failures',
                             params=params)

    def show_host_failure(self, failure_id: str) -> dict:
        return self._payload('GET', '/v1/host-failures/%s' % failure_id,
                             'host_failure')
