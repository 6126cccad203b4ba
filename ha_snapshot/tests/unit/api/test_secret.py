"""Per-server alarm secrets."""

import hashlib
import hmac

import testtools

from ha_snapshot.api import secret


class SecretTestCase(testtools.TestCase):

    def test_secret_is_the_hmac_of_the_server_id(self):
        self.assertEqual(
            hmac.new(b'k', b'server-1', hashlib.sha256).hexdigest(),
            secret.secret_for('k', 'server-1'))
        self.assertNotEqual(secret.secret_for('k', 'server-1'),
                            secret.secret_for('k', 'server-2'))
        self.assertNotEqual(secret.secret_for('k', 'server-1'),
                            secret.secret_for('k2', 'server-1'))

    def test_is_valid(self):
        good = secret.secret_for('k', 's')
        self.assertTrue(secret.is_valid('k', 's', good))
        self.assertFalse(secret.is_valid('k', 's', good[:-1]))
        self.assertFalse(secret.is_valid('k', 's', good.upper()))
        self.assertFalse(secret.is_valid('k', 't', good))

    def test_alarm_url(self):
        self.assertEqual(
            'http://api:8799/v1/alarms/s?secret=' + secret.secret_for('k',
                                                                      's'),
            secret.alarm_url('http://api:8799/', 'k', 's'))

    def test_alarm_urls_of_many_servers_equal_one_by_one(self):
        url = secret.alarm_urls('http://api:8799/', 'k')
        for server in ('s', 'server-2',
                       'a1b2c3d4-0000-4000-8000-00000000abcd'):
            self.assertEqual(
                'http://api:8799/v1/alarms/%s?secret=%s'
                % (server, secret.secret_for('k', server)), url(server))
        # NOTE: never a raw path or query separator from an id.
        self.assertTrue(url('a/b?c').startswith(
            'http://api:8799/v1/alarms/a%2Fb%3Fc?secret='))
