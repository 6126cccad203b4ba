"""The API client against a scripted endpoint: what it sends, how it
reports what the API refuses."""

import socket

from keystoneauth1 import session as ksa_session
import testtools

from ha_snapshot import exception
from ha_snapshot.osc import client as client_mod
from ha_snapshot.tests.unit.osc import scripted

UUID = '6f1d3c9a-1b2c-4d5e-8f90-a1b2c3d4e5f6'


class ClientTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.api = self.useFixture(scripted.ScriptedEndpoint())
        self.client = client_mod.Client(ksa_session.Session(), self.api.url)

    def test_version_header_and_body(self):
        self.api.script[('PUT', '/v1/servers/' + UUID)] = (
            202, {'server': {'id': UUID, 'policy': 'fixed'}})
        server = self.client.protect(UUID, policy='fixed', host='cn1')
        self.assertEqual({'id': UUID, 'policy': 'fixed'}, server)
        request, = self.api.made('PUT', '/v1/servers/' + UUID)
        self.assertEqual('ha-snapshot 1.0',
                         request.headers['OpenStack-API-Version'])
        self.assertEqual({'policy': 'fixed', 'host': 'cn1'}, request.json())

    def test_protect_sends_only_what_is_given(self):
        self.api.script[('PUT', '/v1/servers/' + UUID)] = (
            200, {'server': {'id': UUID}})
        self.client.protect(UUID)
        self.assertEqual({}, self.api.requests[0].json())

    def test_api_version_is_sent_as_chosen(self):
        self.api.script[('GET', '/v1/servers')] = (200, {'servers': []})
        client_mod.Client(ksa_session.Session(), self.api.url + '/',
                          api_version='1.7').list_servers()
        request, = self.api.made('GET', '/v1/servers')
        self.assertEqual('ha-snapshot 1.7',
                         request.headers['OpenStack-API-Version'])

    def test_list_filters(self):
        self.api.script[('GET', '/v1/servers')] = (200, {'servers': []})
        self.assertEqual([], self.client.list_servers(
            all_projects=True, project_id='p1', status='failed'))
        self.assertEqual({'all_projects': ['1'], 'project_id': ['p1'],
                          'status': ['failed']}, self.api.requests[0].query)
        self.client.list_servers()
        self.assertEqual({}, self.api.requests[1].query)

    def test_recovery_routes(self):
        base = '/v1/servers/%s/recoveries' % UUID
        self.api.script[('POST', base)] = (202, {'recovery': {'id': 'r1'}})
        self.api.script[('GET', base)] = (200, {'recoveries': [{'id': 'r1'}]})
        self.api.script[('GET', base + '/r1')] = (
            200, {'recovery': {'id': 'r1', 'state': 'running'}})
        self.assertEqual({'id': 'r1'},
                         self.client.create_recovery(UUID, 'rp-7'))
        self.assertEqual({'restore_point_id': 'rp-7'},
                         self.api.requests[0].json())
        self.client.create_recovery(UUID)
        self.assertEqual({}, self.api.requests[1].json())
        self.assertEqual([{'id': 'r1'}], self.client.list_recoveries(UUID))
        self.assertEqual('running',
                         self.client.get_recovery(UUID, 'r1')['state'])

    def test_unprotect_no_content(self):
        self.api.script[('DELETE', '/v1/servers/' + UUID)] = (204, None)
        self.assertIsNone(self.client.unprotect(UUID))

    def test_path_parts_are_quoted(self):
        self.assertRaises(exception.ApiError, self.client.get_server,
                          'a/../b')
        self.assertEqual('/v1/servers/a%2F..%2Fb', self.api.requests[0].path)

    def test_api_error_document(self):
        self.api.script[('GET', '/v1/servers/' + UUID)] = (404, {'errors': [{
            'status': 404, 'title': 'Not Found',
            'detail': 'Server %s is not protected.' % UUID,
            'code': 'ha_snapshot.server_not_found',
            'request_id': 'req-1234'}]})
        e = self.assertRaises(exception.ApiError, self.client.get_server,
                              UUID)
        self.assertEqual(
            'Server %s is not protected. (HTTP 404 Not Found, code '
            'ha_snapshot.server_not_found, request req-1234)' % UUID, str(e))
        self.assertEqual('ha_snapshot.server_not_found', e.kwargs['code'])

    def test_forbidden_and_version_hints(self):
        self.api.script[('DELETE', '/v1/servers/' + UUID)] = (403, {
            'errors': [{'status': 403, 'title': 'Forbidden',
                        'detail': 'Policy does not allow '
                                  'ha_snapshot:servers:unprotect.'}]})
        e = self.assertRaises(exception.ApiError, self.client.unprotect, UUID)
        self.assertIn('ha_snapshot:servers:unprotect', str(e))
        self.assertIn('does not allow this to your project or role', str(e))
        self.api.script[('GET', '/v1/servers')] = (406, {'errors': [{
            'status': 406, 'title': 'Not Acceptable',
            'detail': 'Unacceptable version header: 1.9'}]})
        e = self.assertRaises(exception.ApiError, self.client.list_servers)
        self.assertIn('Unacceptable version header: 1.9', str(e))
        self.assertIn('--os-ha-snapshot-api-version', str(e))

    def test_error_that_is_not_the_api_document(self):
        self.api.script[('GET', '/v1/servers')] = (
            502, '<html>Bad Gateway from the proxy</html>',
            {'x-openstack-request-id': 'req-proxy'})
        e = self.assertRaises(exception.ApiError, self.client.list_servers)
        self.assertIn('GET %s/v1/servers failed' % self.api.url, str(e))
        self.assertIn('Bad Gateway from the proxy', str(e))
        self.assertIn('HTTP 502', str(e))
        self.assertIn('request req-proxy', str(e))

    def test_success_that_is_not_json(self):
        self.api.script[('GET', '/v1/servers')] = (200, 'hello')
        e = self.assertRaises(exception.ClientError, self.client.list_servers)
        self.assertIn('not JSON', str(e))

    def test_answer_without_the_expected_member(self):
        self.api.script[('GET', '/v1/servers')] = (200, {'versions': []})
        e = self.assertRaises(exception.ClientError, self.client.list_servers)
        self.assertIn('without "servers"', str(e))
        self.assertIn('is %s the ha-snapshot API?' % self.api.url, str(e))

    def test_unreachable(self):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        url = 'http://127.0.0.1:%d' % port
        client = client_mod.Client(ksa_session.Session(), url)
        e = self.assertRaises(exception.ApiUnreachable, client.list_servers)
        self.assertIn('The ha-snapshot API at %s/v1/servers cannot be '
                      'reached' % url, str(e))
