"""[nova]/[glance] options and the connections built from them."""

import testtools

from ha_snapshot.conf import opts
from ha_snapshot import exception
from ha_snapshot.openstack import clients
from ha_snapshot.tests import base


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
