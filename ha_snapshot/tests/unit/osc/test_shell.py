"""The real ``openstack`` shell with the plugin: options, endpoint choice,
name resolution through a scripted compute API, the wait loop."""

import io
import json

import testtools

from ha_snapshot import exception
from ha_snapshot.osc.v1 import recoveries
from ha_snapshot.tests import base
from ha_snapshot.tests.unit.osc import scripted

WEB = '11111111-2222-4333-8444-555555555555'
DUP1 = 'aaaaaaaa-2222-4333-8444-555555555555'
DUP2 = 'bbbbbbbb-2222-4333-8444-555555555555'


class ShellTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.nova = self.useFixture(scripted.NovaEndpoint(
            {WEB: 'web', DUP1: 'dup', DUP2: 'dup', '%s' % DUP2[::-1]:
             'web-2'}))
        self.api = self.useFixture(scripted.ScriptedEndpoint())
        for uuid in (WEB, DUP1):
            self.api.script[('GET', '/v1/servers/' + uuid)] = (
                200, {'server': {'id': uuid, 'status': 'protected',
                                 'rpo_seconds': 12.5}})

    def openstack(self, *args, env=None, url=True):
        base = ['--os-auth-type', 'none']
        if url:
            base += ['--os-ha-snapshot-url', self.api.url]
        environ = {'OS_COMPUTE_ENDPOINT_OVERRIDE': self.nova.compute_url}
        environ.update(env or {})
        return scripted.run_openstack(*base, *args, env=environ)

    def test_uuid_is_used_without_asking_nova(self):
        code, out, err = self.openstack('ha', 'show', WEB, '-f', 'json')
        self.assertEqual(0, code, err)
        self.assertEqual({'id': WEB, 'status': 'protected',
                          'rpo_seconds': 12.5}, json.loads(out))
        self.assertEqual([], self.nova.requests)

    def test_name_is_resolved_through_nova(self):
        code, out, err = self.openstack('ha', 'show', 'web', '-f', 'json')
        self.assertEqual(0, code, err)
        self.assertEqual(WEB, json.loads(out)['id'])
        self.assertTrue(self.nova.made('GET', '/v2.1/servers'))
        self.assertEqual(1, len(self.api.made('GET', '/v1/servers/' + WEB)))

    def test_ambiguous_name(self):
        code, out, err = self.openstack('ha', 'recover', 'dup')
        self.assertEqual(1, code)
        self.assertEqual('', out)
        self.assertIn("2 servers are named 'dup'", err)
        self.assertIn(DUP1, err)
        self.assertIn(DUP2, err)
        # NOTE: nothing was asked of the API: no recovery of either.
        self.assertEqual([], self.api.requests)

    def test_unknown_name(self):
        code, out, err = self.openstack('ha', 'unprotect', 'nosuch')
        self.assertEqual(1, code)
        self.assertIn("No server with the name or ID 'nosuch'", err)
        self.assertEqual([], self.api.requests)

    def test_name_without_compute_endpoint(self):
        code, out, err = self.openstack(
            'ha', 'show', 'web', env={'OS_COMPUTE_ENDPOINT_OVERRIDE': None})
        self.assertEqual(1, code)
        self.assertIn("No server with the name or ID 'web'", err)
        self.assertIn('pass the server ID instead', err)

    def test_url_from_environment(self):
        code, out, err = self.openstack(
            'ha', 'show', WEB, '-f', 'value', '-c', 'status', url=False,
            env={'OS_HA_SNAPSHOT_URL': self.api.url})
        self.assertEqual(0, code, err)
        self.assertEqual('protected\n', out)

    def test_no_endpoint(self):
        code, out, err = self.openstack('ha', 'list', url=False)
        self.assertEqual(1, code)
        self.assertIn('No ha-snapshot API endpoint', err)
        self.assertIn('--os-ha-snapshot-url', err)

    def test_api_version_option(self):
        self.api.script[('GET', '/v1/servers')] = (200, {'servers': []})
        code, out, err = self.openstack(
            '--os-ha-snapshot-api-version', '1.3', 'ha', 'list')
        self.assertEqual(0, code, err)
        self.assertEqual('ha-snapshot 1.3', self.api.requests[0].headers[
            'OpenStack-API-Version'])

    def test_bad_api_version_option(self):
        code, out, err = self.openstack(
            '--os-ha-snapshot-api-version', '2.x', 'ha', 'list')
        self.assertNotEqual(0, code)
        self.assertIn("Invalid --os-ha-snapshot-api-version '2.x'", err)
        self.assertEqual([], self.api.requests)

    def test_timeout_needs_wait(self):
        code, out, err = self.openstack('ha', 'recover', WEB, '--timeout',
                                        '5')
        self.assertEqual(1, code)
        self.assertIn('--timeout needs --wait', err)
        self.assertEqual([], self.api.requests)

    def test_bad_timeout(self):
        code, out, err = self.openstack('ha', 'recover', WEB, '--wait',
                                        '--timeout', '-1')
        self.assertEqual(2, code)
        self.assertIn('expected a number of seconds greater than 0', err)

    def test_help_lists_the_commands(self):
        code, out, err = self.openstack('help', 'ha')
        self.assertEqual(0, code, err)
        for name in ('ha protect', 'ha unprotect', 'ha list', 'ha show',
                     'ha restore point list', 'ha recover',
                     'ha recovery list', 'ha manager list',
                     'ha host failure list'):
            self.assertIn(name, out)


class ProjectTest(testtools.TestCase):
    """--project by name through a scripted Keystone, or as an ID."""

    def setUp(self):
        super().setUp()
        self.keystone = self.useFixture(scripted.ScriptedEndpoint())
        url = self.keystone.url
        version = {'id': 'v3.14', 'status': 'stable',
                   'updated': '2020-04-07T00:00:00Z',
                   'links': [{'rel': 'self', 'href': url + '/v3/'}]}
        self.keystone.script[('GET', '/v3')] = (200, {'version': version})
        self.keystone.script[('GET', '/v3/')] = (200, {'version': version})
        self.keystone.script[('GET', '/v3/projects')] = lambda r: (200, {
            'projects': [{'id': 'a' * 32, 'name': 'demo',
                          'domain_id': 'default'}]
            if r.query.get('name') == ['demo'] else []})
        self.api = self.useFixture(scripted.ScriptedEndpoint())
        self.api.script[('GET', '/v1/servers')] = (200, {'servers': []})

    def list(self, project, keystone=True):
        env = {}
        if keystone:
            env['OS_IDENTITY_ENDPOINT_OVERRIDE'] = self.keystone.url + '/v3'
        return scripted.run_openstack(
            '--os-auth-type', 'none', '--os-ha-snapshot-url', self.api.url,
            'ha', 'list', '--project', project, env=env)

    def test_name(self):
        code, out, err = self.list('demo')
        self.assertEqual(0, code, err)
        request, = self.api.requests
        self.assertEqual({'project_id': ['a' * 32]}, request.query)

    def test_unknown_name(self):
        code, out, err = self.list('nosuch')
        self.assertEqual(1, code)
        self.assertIn("Keystone knows no project with the name or ID "
                      "'nosuch'", err)
        self.assertEqual([], self.api.requests)

    def test_id_is_not_looked_up(self):
        code, out, err = self.list('b' * 32)
        self.assertEqual(0, code, err)
        self.assertEqual([], self.keystone.requests)
        self.assertEqual({'project_id': ['b' * 32]},
                         self.api.requests[0].query)

    def test_without_keystone_the_value_is_an_id(self):
        code, out, err = self.list('p2', keystone=False)
        self.assertEqual(0, code, err)
        self.assertEqual({'project_id': ['p2']}, self.api.requests[0].query)


class CatalogTest(testtools.TestCase):
    """The endpoint from the catalog of a (scripted) Keystone token."""

    def setUp(self):
        super().setUp()
        self.keystone = self.useFixture(scripted.ScriptedEndpoint())
        self.api = self.useFixture(scripted.ScriptedEndpoint())
        self.api.script[('GET', '/v1/servers')] = (200, {'servers': []})
        url = self.keystone.url
        version = {'id': 'v3.14', 'status': 'stable',
                   'updated': '2020-04-07T00:00:00Z',
                   'links': [{'rel': 'self', 'href': url + '/v3/'}]}
        self.keystone.script[('GET', '/v3')] = (200, {'version': version})
        self.keystone.script[('GET', '/v3/')] = (200, {'version': version})
        self.catalog = []
        self.keystone.script[('POST', '/v3/auth/tokens')] = self._token

    def _token(self, request):
        domain = {'id': 'default', 'name': 'Default'}
        token = {
            'methods': ['password'], 'expires_at': '2099-01-01T00:00:00Z',
            'issued_at': '2020-01-01T00:00:00Z',
            'user': {'id': 'u1', 'name': 'demo', 'domain': domain},
            'project': {'id': 'p1', 'name': 'demo', 'domain': domain},
            'roles': [{'id': 'r1', 'name': 'member'}],
            'catalog': self.catalog}
        return 201, {'token': token}, {'X-Subject-Token': 'tok-123'}

    def list(self):
        return scripted.run_openstack(
            '--os-auth-url', self.keystone.url + '/v3',
            '--os-username', 'demo', '--os-password', 'secret',
            '--os-project-name', 'demo', '--os-user-domain-id', 'default',
            '--os-project-domain-id', 'default', 'ha', 'list')

    def test_endpoint_from_catalog(self):
        self.catalog.append({
            'type': 'ha-snapshot', 'name': 'ha-snapshot', 'id': 's1',
            'endpoints': [{'id': 'e1', 'interface': 'public',
                           'region': 'RegionOne', 'region_id': 'RegionOne',
                           'url': self.api.url}]})
        code, out, err = self.list()
        self.assertEqual(0, code, err)
        request, = self.api.requests
        self.assertEqual('tok-123', request.headers['X-Auth-Token'])
        self.assertEqual({'password'}, set(self.keystone.made(
            'POST', '/v3/auth/tokens')[0].json()['auth']['identity'][
                'methods']))

    def test_catalog_without_the_service(self):
        code, out, err = self.list()
        self.assertEqual(1, code)
        self.assertIn('No ha-snapshot API endpoint', err)
        self.assertIn('service type "ha-snapshot"', err)
        self.assertEqual([], self.api.requests)


class _Recoveries:
    """get_recovery answers from a list; an exception in it is raised."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def get_recovery(self, server_id, recovery_id):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer, id=recovery_id)


class WaitTest(testtools.TestCase):

    def wait(self, client, timeout=None):
        clock = base.FakeClock()
        out = io.StringIO()
        try:
            result = recoveries.wait_for_recovery(
                client, 'srv', {'id': 'r1', 'state': 'requested'},
                timeout=timeout, interval=2, out=out, clock=clock,
                sleep=clock.sleep)
        except exception.RecoveryTimeout as e:
            result = e
        return result, out.getvalue().splitlines()

    def test_reports_each_change_once(self):
        client = _Recoveries([
            {'state': 'requested'},
            {'state': 'running', 'step': 'rebuild'},
            {'state': 'running', 'step': 'rebuild'},
            {'state': 'running', 'step': 'rebaseline'},
            {'state': 'succeeded', 'step': 'done'},
        ])
        result, lines = self.wait(client)
        self.assertEqual('succeeded', result['state'])
        self.assertEqual([
            'Recovery r1 of server srv: requested [0 s]',
            'Recovery r1 of server srv: running (step: rebuild) [4 s]',
            'Recovery r1 of server srv: running (step: rebaseline) [8 s]',
            'Recovery r1 of server srv: succeeded (step: done) [10 s]',
        ], lines)

    def test_failure_shows_the_error(self):
        client = _Recoveries([{'state': 'failed', 'step': 'rebuild',
                               'error': 'Nova refused the rebuild'}])
        result, lines = self.wait(client)
        self.assertEqual('failed', result['state'])
        self.assertIn('failed (step: rebuild): Nova refused the rebuild',
                      lines[-1])

    def test_timeout(self):
        client = _Recoveries([{'state': 'running'}] * 10)
        result, lines = self.wait(client, timeout=5)
        self.assertIsInstance(result, exception.RecoveryTimeout)
        self.assertIn('Recovery r1 of server srv is still running after '
                      '5 s; it goes on', str(result))
        # NOTE: polls at 2 and 4 s, the last sleep cut to the 1 s left.
        self.assertEqual(3, client.calls)

    def test_unreachable_api_is_retried(self):
        down = exception.ApiUnreachable(url='http://api', reason='refused')
        client = _Recoveries([down, down, {'state': 'succeeded'}])
        result, lines = self.wait(client)
        self.assertEqual('succeeded', result['state'])
        self.assertEqual(3, len(lines), lines)
        self.assertIn('cannot be reached: refused; retrying', lines[1])
