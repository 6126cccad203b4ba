"""A scripted HTTP endpoint in a thread, and a runner of ``openstack``.

:class:`ScriptedEndpoint` answers each request with what a test put in its
script for that method and path (or a callable's answer), and records what
it was asked: enough to check what a client sends, and to stand in for a
service the tests cannot run here (the compute API for name lookups).

:func:`run_openstack` runs the real ``openstack`` shell (python-
openstackclient's ``main``) in this process with the given arguments and
returns its exit code, stdout and stderr.
"""

import contextlib
import io
import json
import logging
import os
import re
import sys
import urllib.parse

import fixtures
from osc_lib import clientmanager

from openstackclient import shell as osc_shell

from ha_snapshot.tests.unit import scripted_http


class Request:
    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body) if self.body else None

    def __repr__(self):
        return '%s %s?%s' % (self.method, self.path,
                             urllib.parse.urlencode(self.query, doseq=True))


class ScriptedEndpoint(fixtures.Fixture):
    """``script[(method, path)] = (status, doc[, headers])`` or callable.

    A script over :class:`ha_snapshot.tests.unit.scripted_http.
    ScriptedEndpoint` (the one HTTP server of the unit tests): what is not
    in the script gets a placement-style 404.
    """

    def __init__(self):
        super().__init__()
        self.script = {}
        self.requests = []

    def _setUp(self):
        self.server = scripted_http.ScriptedEndpoint(self._answer)
        self.addCleanup(self.server.stop)
        self.url = self.server.url

    def _answer(self, raw):
        request = Request(raw.method, raw.path, raw.query, raw.headers,
                          raw.stream.read_all())
        self.requests.append(request)
        answer = self.script.get((raw.method, raw.path))
        if callable(answer):
            answer = answer(request)
        if answer is None:
            answer = (404, {'errors': [{
                'status': 404, 'title': 'Not Found',
                'detail': 'scripted endpoint: nothing for %s %s' % (
                    raw.method, raw.path)}]})
        status, doc = answer[0], answer[1]
        headers = dict(answer[2]) if len(answer) > 2 else {}
        if not isinstance(doc, (dict, list)):
            doc = doc or ''
            headers.setdefault('Content-Type', 'text/plain')
        return status, headers, doc

    def made(self, method, path):
        return [r for r in self.requests
                if r.method == method and r.path == path]


class NovaEndpoint(ScriptedEndpoint):
    """The compute API shapes ``find_server`` reads, for some servers.

    ``servers`` maps ID -> name, ``hosts`` and ``projects`` ID -> compute
    host and project. GET /v2.1 (version discovery),
    GET /v2.1/servers/{id}, GET /v2.1/servers[/detail]?name=REGEX.
    """

    def __init__(self, servers: dict, hosts: dict | None = None,
                 projects: dict | None = None):
        super().__init__()
        self.servers = servers
        self.hosts = hosts or {}
        self.projects = projects or {}

    def _setUp(self):
        super()._setUp()
        self.compute_url = self.url + '/v2.1'
        version = {'id': 'v2.1', 'status': 'CURRENT', 'version': '2.96',
                   'min_version': '2.1', 'updated': '2013-07-23T11:33:21Z',
                   'links': [{'rel': 'self',
                              'href': self.compute_url + '/'}]}
        self.script[('GET', '/v2.1')] = (200, {'version': version})
        self.script[('GET', '/v2.1/')] = (200, {'version': version})
        self.script[('GET', '/')] = (300, {'versions': [version]})
        self.script[('GET', '/v2.1/servers')] = self._list
        self.script[('GET', '/v2.1/servers/detail')] = self._list
        for uuid in self.servers:
            self.script[('GET', '/v2.1/servers/' + uuid)] = (
                lambda request, uuid=uuid: (200, {
                    'server': self._server(uuid)}))

    def _server(self, uuid):
        return {'id': uuid, 'name': self.servers[uuid], 'status': 'ACTIVE',
                'tenant_id': self.projects.get(uuid, 'p1'),
                'OS-EXT-SRV-ATTR:host': self.hosts.get(uuid),
                'links': []}

    def _list(self, request):
        pattern = request.query.get('name', [''])[0]
        found = [self._server(uuid) for uuid, name in self.servers.items()
                 if re.search(pattern, name)]
        return 200, {'servers': found}


@contextlib.contextmanager
def _captured():
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = old
        # NOTE: every run of the shell adds its console handler to the
        # root logger; drop them so runs do not echo into each other.
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def _forget_clients():
    # NOTE: osc caches each plugin's client on a descriptor of the
    # ClientManager class, not of the instance: a second shell in the same
    # process would get the first one's client (its endpoint, its session).
    for value in vars(clientmanager.ClientManager).values():
        if isinstance(value, clientmanager.ClientCache):
            value._handle = None


def run_openstack(*argv: str, env: dict | None = None):
    """(exit code, stdout, stderr) of ``openstack ARGV`` in this process."""
    _forget_clients()
    # NOTE: no clouds.yaml or OS_* of the machine running the tests.
    clean = {k: None for k in os.environ if k.startswith('OS_')}
    clean['OS_CLIENT_CONFIG_FILE'] = os.devnull
    clean.update(env or {})
    with fixtures.EnvironmentVariable('OS_CLOUD'):
        patches = [fixtures.EnvironmentVariable(k, v)
                   for k, v in clean.items()]
        for patch in patches:
            patch.setUp()
        try:
            with _captured() as (out, err):
                try:
                    code = osc_shell.main(list(argv))
                except SystemExit as e:
                    code = e.code
        finally:
            _forget_clients()
            for patch in reversed(patches):
                patch.cleanUp()
    return code, out.getvalue(), err.getvalue()
