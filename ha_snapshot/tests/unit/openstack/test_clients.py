"""[nova]/[glance] options and the connections built from them."""

import json
import uuid

from keystoneauth1 import loading as ks_loading
import testtools

from ha_snapshot.conf import opts
from ha_snapshot import exception
from ha_snapshot.openstack import clients
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import fake_openstack
from ha_snapshot.tests.unit import scripted_http


class ConnectionConfTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf('/nowhere')

    def test_groups_in_sample(self):
        groups = {g.name: {o.dest for o in o_} for g, o_ in opts.list_opts()}
        for name in ('nova', 'glance'):
            self.assertTrue({'endpoint_override', 'region_name', 'interface',
                             'timeout', 'auth_type', 'username'}
                            <= groups[name], name)

    def test_timeout_has_a_default(self):
        self.assertEqual(60, self.conf.nova.timeout)
        self.assertEqual(60, self.conf.glance.timeout)

    def test_no_auth_type(self):
        e = self.assertRaises(exception.ConfigurationError,
                              clients.connection, self.conf, 'glance')
        self.assertIn('[glance] auth_type is not set', str(e))

    def test_none_needs_endpoint(self):
        self.conf.set_override('auth_type', 'none', group='nova')
        e = self.assertRaises(exception.ConfigurationError,
                              clients.connection, self.conf, 'nova')
        self.assertIn('[nova] auth_type = none needs [nova] '
                      'endpoint_override', str(e))

    def test_unknown_group(self):
        e = self.assertRaises(exception.ConfigurationError,
                              clients.connection, self.conf, 'swift')
        self.assertIn('no OpenStack client group [swift]', str(e))

    def test_password_plugin_missing_option(self):
        self.conf.set_override('auth_type', 'password', group='nova')
        e = self.assertRaises(exception.ConfigurationError,
                              clients.connection, self.conf, 'nova')
        self.assertIn('[nova] options', str(e))
        self.assertIn('auth_url', str(e))

    def test_endpoint_override_per_service(self):
        for group, url in (('nova', 'http://127.0.0.1:1/v2.1'),
                           ('glance', 'http://127.0.0.1:2')):
            self.conf.set_override('auth_type', 'none', group=group)
            self.conf.set_override('endpoint_override', url, group=group)
        nova = clients.connection(self.conf, 'nova')
        glance = clients.connection(self.conf, 'glance')
        self.assertEqual('http://127.0.0.1:1/v2.1',
                         nova.config.get_endpoint('compute'))
        self.assertEqual('http://127.0.0.1:2',
                         glance.config.get_endpoint('image'))
        self.assertIsNone(nova.config.get_endpoint('image'))



class SharedSessionTestCase(testtools.TestCase):
    """Connections of one group share a session: one token, re-used."""

    def setUp(self):
        super().setUp()
        self.keystone = scripted_http.ScriptedEndpoint(self.keystone_app)
        self.addCleanup(self.keystone.stop)
        self.nova = fake_openstack.FakeNova()
        self.addCleanup(self.nova.stop)
        self.nova.add_service('compute1')
        self.conf = base.make_conf('/nowhere')
        self.conf.register_opts(
            ks_loading.get_auth_plugin_conf_options('v3password'),
            group='nova')
        for name, value in (('auth_type', 'v3password'),
                            ('auth_url', self.keystone.url + '/v3'),
                            ('username', 'ha-snapshot'),
                            ('password', 'secret'),
                            ('project_name', 'service'),
                            ('user_domain_name', 'Default'),
                            ('project_domain_name', 'Default'),
                            ('endpoint_override', self.nova.url)):
            self.conf.set_override(name, value, group='nova')

    def keystone_app(self, request):
        request.read_json()
        body = {'token': {
            'methods': ['password'], 'expires_at': '2999-01-01T00:00:00Z',
            'issued_at': '2026-01-01T00:00:00Z', 'catalog': [],
            'user': {'id': 'u', 'name': 'ha-snapshot',
                     'domain': {'id': 'default', 'name': 'Default'}},
            'project': {'id': 'p', 'name': 'service',
                        'domain': {'id': 'default', 'name': 'Default'}}}}
        return 201, {'X-Subject-Token': uuid.uuid4().hex,
                     'Content-Type': 'application/json'}, json.dumps(body)

    def tokens(self) -> int:
        return len([r for r in self.keystone.requests
                    if (r.method, r.path) == ('POST', '/v3/auth/tokens')])

    def list_services(self):
        compute = clients.connection(self.conf, 'nova').compute
        return [s.host for s in compute.services(binary='nova-compute')]

    def test_one_token_for_many_connections(self):
        for _ in range(3):
            self.assertEqual(['compute1'], self.list_services())
        self.assertEqual(1, self.tokens())
        # NOTE: every Nova request carried that one token.
        sent = {r.headers.get('X-Auth-Token')
                for r in self.nova.endpoint.requests
                if r.path.endswith('/os-services')}
        self.assertEqual(1, len(sent))
        self.assertNotIn(None, sent)

    def test_a_changed_option_makes_a_new_session(self):
        self.list_services()
        self.conf.set_override('password', 'rotated', group='nova')
        self.list_services()
        self.assertEqual(2, self.tokens())
        self.assertEqual('rotated',
                         self.keystone.requests[-1].json['auth']['identity']
                         ['password']['user']['password'])
