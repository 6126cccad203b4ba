"""Where alarm URLs point: [api] public_endpoint, the Keystone catalog of
the request, or nowhere; never the Host header."""

import json

from ha_snapshot.api import endpoint
from ha_snapshot.tests import base

CATALOG = [
    {'type': 'compute', 'endpoints': [
        {'interface': 'public', 'url': 'http://nova.example/v2.1'}]},
    {'type': 'ha-snapshot', 'endpoints': [
        {'interface': 'internal', 'url': 'http://10.0.0.5/ha-snapshot'},
        {'interface': 'public', 'url': 'https://cloud.example/ha-snapshot/'}]},
]


class EndpointTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir)
        self.environ = {'HTTP_HOST': 'attacker.example',
                        endpoint.CATALOG_HEADER: json.dumps(CATALOG)}

    def test_public_endpoint_option_wins(self):
        self.conf.set_override('public_endpoint', 'https://api.example/x/',
                               group='api')
        self.conf.set_override('auth_strategy', 'keystone', group='api')
        self.assertEqual('https://api.example/x',
                         endpoint.public_url(self.conf, self.environ))

    def test_keystone_catalog_public_interface(self):
        self.conf.set_override('auth_strategy', 'keystone', group='api')
        self.assertEqual('https://cloud.example/ha-snapshot',
                         endpoint.public_url(self.conf, self.environ))

    def test_noauth_ignores_a_catalog_header_a_client_could_forge(self):
        self.conf.set_override('auth_strategy', 'noauth', group='api')
        self.assertIsNone(endpoint.public_url(self.conf, self.environ))

    def test_no_catalog_or_a_broken_one_gives_none(self):
        self.conf.set_override('auth_strategy', 'keystone', group='api')
        self.assertIsNone(endpoint.public_url(self.conf, {}))
        self.assertIsNone(endpoint.public_url(
            self.conf, {endpoint.CATALOG_HEADER: '{not json'}))
        self.assertIsNone(endpoint.from_catalog(CATALOG[:1]))
