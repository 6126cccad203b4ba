"""``openstack ha manager list``: the command class over the real client
and a scripted API (the shell's entry points come from the installed
package, so the class is run directly)."""

import argparse

from keystoneauth1 import session as ksa_session
import testtools

from ha_snapshot import exception
from ha_snapshot.osc import client as client_mod
from ha_snapshot.osc.v1 import managers
from ha_snapshot.tests.unit.osc import scripted

MANAGERS = [
    {'id': 'i-1', 'host': 'ctl-a', 'pid': 11, 'version': '1.0',
     'alive': True, 'heartbeat_age': 2.5, 'servers': 120, 'leases': 3,
     'heartbeat_at': '2026-12-07T03:00:00.000000Z',
     'started_at': '2026-12-07T01:00:00.000000Z', 'stopped_at': None,
     'counters': {'deltas_merged': 40, 'shipped_bytes': 1 << 30,
                  'stored_bytes': 1 << 20, 'recoveries_succeeded': 2,
                  'recoveries_failed': 0, 'from_a_newer_api': 9}},
    {'id': 'i-2', 'host': 'ctl-b', 'pid': 12, 'version': '1.0',
     'alive': False, 'heartbeat_age': 95.0, 'servers': 0,
     'heartbeat_at': '2026-12-07T02:58:27.000000Z',
     'started_at': '2026-12-07T01:00:01.000000Z', 'stopped_at': None},
]


class _ClientManager:
    def __init__(self, ha):
        self.ha = ha


class _App:
    def __init__(self, ha):
        self.client_manager = _ClientManager(ha)


class ListManagersTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.api = self.useFixture(scripted.ScriptedEndpoint())
        client = client_mod.Client(ksa_session.Session(), self.api.url)
        self.command = managers.ListManagers(_App(client),
                                             argparse.Namespace())

    def run_command(self, *args):
        parsed = self.command.get_parser('openstack ha manager list') \
            .parse_args(list(args))
        headers, rows = self.command.take_action(parsed)
        return list(headers), list(rows)

    def test_list(self):
        self.api.script[('GET', '/v1/managers')] = (
            200, {'managers': MANAGERS})
        headers, rows = self.run_command()
        self.assertEqual(['Host', 'State', 'Heartbeat Age', 'Servers',
                          'Started At'], headers)
        self.assertEqual([
            ('ctl-a', 'alive', 2.5, 120, '2026-12-07T01:00:00.000000Z'),
            ('ctl-b', 'dead', 95.0, 0, '2026-12-07T01:00:01.000000Z'),
        ], rows)
        request, = self.api.made('GET', '/v1/managers')
        self.assertEqual('ha-snapshot 1.0',
                         request.headers['OpenStack-API-Version'])

    def test_long(self):
        self.api.script[('GET', '/v1/managers')] = (
            200, {'managers': MANAGERS[:1]})
        headers, rows = self.run_command('--long')
        self.assertEqual(['ID', 'PID', 'Version', 'Heartbeat At',
                          'Stopped At', 'Leases', 'Deltas Merged',
                          'Shipped Bytes', 'Stored Bytes',
                          'Recoveries Succeeded', 'Recoveries Failed'],
                         headers[5:])
        self.assertEqual(('i-1', 11, '1.0', '2026-12-07T03:00:00.000000Z',
                          None, 3, 40, 1 << 30, 1 << 20, 2, 0), rows[0][5:])

    def test_long_from_an_api_without_counters(self):
        self.api.script[('GET', '/v1/managers')] = (
            200, {'managers': MANAGERS[1:]})
        headers, rows = self.run_command('--long')
        self.assertEqual(len(headers), len(rows[0]))
        self.assertEqual(('', '', '', '', '', ''), rows[0][10:])

    def test_refusal_is_the_api_s_words(self):
        self.api.script[('GET', '/v1/managers')] = (403, {'errors': [{
            'status': 403, 'code': 'ha_snapshot.policy.forbidden',
            'title': 'Forbidden',
            'detail': 'Policy does not allow ha_snapshot:manager:list to '
                      'be performed.'}]})
        e = self.assertRaises(exception.ApiError, self.run_command)
        self.assertIn('ha_snapshot:manager:list', str(e))
        self.assertIn('HTTP 403', str(e))
