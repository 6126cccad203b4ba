"""``openstack ha host failure list``: the command class over the real
client and a scripted API (the shell's entry points come from the
installed package, so the class is run directly)."""

import argparse

from keystoneauth1 import session as ksa_session
import testtools

from ha_snapshot.osc import client as client_mod
from ha_snapshot.osc.v1 import host_failures
from ha_snapshot.tests.unit.osc import scripted
from ha_snapshot.tests.unit.osc import test_managers

FAILURES = [
    {'id': 'f-1', 'host': 'compute1', 'state': 'fenced', 'reason': 'failed',
     'detected_at': '2026-12-07T03:00:00.000000Z',
     'confirmed_at': '2026-12-07T03:00:10.000000Z',
     'fenced_at': '2026-12-07T03:00:10.200000Z', 'closed_at': None,
     'updated_at': '2026-12-07T03:00:10.200000Z',
     'fencing_driver': 'nova-force-down', 'fence_attempts': 1,
     'result': 'compute service s-1 forced down in Nova', 'error': None,
     'evacuated_at': '2026-12-07T03:01:10.000000Z',
     'evacuation': '2 servers evacuated and restored',
     'recoveries': {'succeeded': 2, 'failed': 1}},
]


class ListHostFailuresTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.api = self.useFixture(scripted.ScriptedEndpoint())
        client = client_mod.Client(ksa_session.Session(), self.api.url)
        self.command = host_failures.ListHostFailures(
            test_managers._App(client), argparse.Namespace())

    def run_command(self, *args):
        parsed = self.command.get_parser(
            'openstack ha host failure list').parse_args(list(args))
        headers, rows = self.command.take_action(parsed)
        return list(headers), list(rows)

    def test_list_and_filters(self):
        self.api.script[('GET', '/v1/host-failures')] = (
            200, {'host_failures': FAILURES})
        headers, rows = self.run_command()
        self.assertEqual(['Host', 'State', 'Detected At', 'Fenced At',
                          'Evacuated At', 'Recoveries', 'Result',
                          'Evacuation'], headers)
        [row] = rows
        self.assertEqual(('compute1', 'fenced',
                          '2026-12-07T03:00:00.000000Z',
                          '2026-12-07T03:00:10.200000Z',
                          '2026-12-07T03:01:10.000000Z'), row[:5])
        self.assertEqual('1 failed, 2 succeeded', row[5].human_readable())
        self.assertEqual(('compute service s-1 forced down in Nova',
                          '2 servers evacuated and restored'), row[6:])
        request, = self.api.made('GET', '/v1/host-failures')
        self.assertEqual({}, request.query)
        headers, rows = self.run_command('--host', 'compute1', '--open',
                                         '--long')
        self.assertEqual(['ID', 'Confirmed At', 'Closed At',
                          'Fencing Driver', 'Fence Attempts', 'Error',
                          'Reason'], headers[8:])
        self.assertEqual(('f-1', '2026-12-07T03:00:10.000000Z', None,
                          'nova-force-down', 1, None, 'failed'), rows[0][8:])
        request = self.api.made('GET', '/v1/host-failures')[-1]
        self.assertEqual({'host': ['compute1'], 'open': ['1']},
                         request.query)


class ShowHostFailureTest(testtools.TestCase):

    def test_show_lists_each_servers_recovery(self):
        api = self.useFixture(scripted.ScriptedEndpoint())
        client = client_mod.Client(ksa_session.Session(), api.url)
        command = host_failures.ShowHostFailure(test_managers._App(client),
                                                argparse.Namespace())
        evacuations = [
            {'server_id': 's-1', 'action': 'evacuate', 'state': 'succeeded',
             'step': 'done', 'finished_at': '2026-12-07T03:01:00Z',
             'error': None},
            {'server_id': 's-2', 'action': 'evacuate', 'state': 'failed',
             'step': 'evacuate-server', 'finished_at': '2026-12-07T03:01:10Z',
             'error': 'EvacuationFailed: locked'}]
        api.script[('GET', '/v1/host-failures/f-1')] = (
            200, {'host_failure': dict(FAILURES[0],
                                       evacuations=evacuations)})
        parsed = command.get_parser('openstack ha host failure show') \
            .parse_args(['f-1'])
        names, values = command.take_action(parsed)
        shown = dict(zip(names, values))
        self.assertEqual('f-1', shown['id'])
        self.assertEqual(
            's-1 evacuate succeeded (step done, finished '
            '2026-12-07T03:01:00Z)\n'
            's-2 evacuate failed (step evacuate-server, finished '
            '2026-12-07T03:01:10Z): EvacuationFailed: locked',
            shown['evacuations'].human_readable())
