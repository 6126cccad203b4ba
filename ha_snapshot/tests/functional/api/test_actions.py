"""What the API's actions send: the exact RPC to the agent, through the
manager's real endpoint, and the requests to Nova."""

import webob

from ha_snapshot.tests import base
from ha_snapshot.tests.functional.api import fixtures as api_fixtures


class ActionsTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.env = api_fixtures.APIFixture()
        self.env.start_fixture()
        self.addCleanup(self.env.stop_fixture)
        self.ids = dict(self.env.seeded)

    def request(self, method, path, project='PROJECT_P', roles='member',
                body=None):
        req = webob.Request.blank(path, method=method, headers={
            'X-User-Id': 'mia', 'X-Project-Id': self.ids[project],
            'X-Roles': roles})
        if body is not None:
            req.body = body.encode()
            req.content_type = 'application/json'
        return req.get_response(self.env.app)

    def protect_cast(self, server, **spec):
        """The protect cast the agent must get for ``server`` (the Nova
        server of the fixture, name web-1 unless ``spec`` says)."""
        return ('protect', {'instance': server,
                            'project': self.ids['PROJECT_P'],
                            'spec': dict({'nova': True, 'uuid': server,
                                          'name': 'web-1'}, **spec)})

    def test_protect_asks_nova_and_casts_to_the_agent_once(self):
        server = self.ids['NOVA_SERVER']
        resp = self.request('PUT', '/v1/servers/' + server)
        self.assertEqual(202, resp.status_int, resp.text)
        self.env.wait_agent(1)
        self.assertEqual([self.protect_cast(server)], self.env.agent.calls)
        self.assertIn(('GET', '/v2.1/servers/' + server),
                      self.env.nova.endpoint.calls())
        # Protected (the agent registered): a second PUT casts nothing and
        # asks Nova nothing.
        self.env.db.update_instance_status(server, 'protecting', 'protected')
        asked = len(self.env.nova.endpoint.requests)
        resp = self.request('PUT', '/v1/servers/' + server)
        self.assertEqual(200, resp.status_int, resp.text)
        self.assertEqual(1, len(self.env.agent.calls))
        self.assertEqual(asked, len(self.env.nova.endpoint.requests))

    def test_protect_with_nova_unreachable_is_a_clear_502(self):
        server = self.ids['NOVA_SERVER']
        # NOTE: nothing listens on the [nova] endpoint any more: the
        # manager's lookup fails with keystoneauth's DiscoveryFailure,
        # which is no openstacksdk exception.
        self.env.nova.stop()
        resp = self.request('PUT', '/v1/servers/' + server)
        self.assertEqual(502, resp.status_int, resp.text)
        error = resp.json['errors'][0]
        self.assertEqual('ha_snapshot.openstack.error', error['code'])
        self.assertIn('Nova: looking up server %s: DiscoveryFailure'
                      % server, error['detail'])
        self.assertEqual([], self.env.agent.calls)

    def test_the_chosen_policy_reaches_the_agent(self):
        server = self.ids['NOVA_SERVER']
        resp = self.request('PUT', '/v1/servers/' + server,
                            body='{"policy": "fixed"}')
        self.assertEqual(202, resp.status_int, resp.text)
        self.env.wait_agent(1)
        self.assertEqual([self.protect_cast(server, policy='fixed')],
                         self.env.agent.calls)
        self.assertEqual('fixed', self.env.db.get_instance(server).policy)
        # Protected: another policy is cast to its agent; the same one
        # again casts nothing.
        self.env.db.update_instance_status(server, 'protecting', 'protected')
        resp = self.request('PUT', '/v1/servers/' + server,
                            body='{"policy": "adaptive"}')
        self.assertEqual(202, resp.status_int, resp.text)
        self.assertEqual('adaptive', resp.json['server']['policy'])
        self.env.wait_agent(2)
        # NOTE: the manager's protect of a recorded server knows no name:
        # the spec leaves the key out (a null before ProtectionSpec).
        cast = self.protect_cast(server, policy='adaptive')
        del cast[1]['spec']['name']
        self.assertEqual(cast, self.env.agent.calls[1])
        resp = self.request('PUT', '/v1/servers/' + server,
                            body='{"policy": "adaptive"}')
        self.assertEqual(200, resp.status_int, resp.text)
        self.assertEqual(2, len(self.env.agent.calls))

    def test_unprotect_casts_to_the_agent_and_keeps_restore_points(self):
        server = self.ids['SERVER_A']
        resp = self.request('DELETE', '/v1/servers/' + server)
        self.assertEqual(204, resp.status_int, resp.text)
        self.env.wait_agent(1)
        self.assertEqual([('unprotect', {'instance': server})],
                         self.env.agent.calls)
        self.assertEqual('deleted', self.env.db.get_instance(server).status)
        self.assertEqual(2, len(self.env.db.list_restore_points(server)))

    def test_refused_requests_send_nothing(self):
        server = self.ids['SERVER_A']
        for method, path, project, roles in (
                ('DELETE', '/v1/servers/' + server, 'PROJECT_Q', 'member'),
                ('DELETE', '/v1/servers/' + server, 'PROJECT_P', 'reader'),
                ('POST', '/v1/servers/%s/recoveries' % server, 'PROJECT_Q',
                 'member'),
                ('POST', '/v1/servers/%s/recoveries' % server, 'PROJECT_P',
                 'reader')):
            resp = self.request(method, path, project, roles)
            self.assertIn(resp.status_int, (403, 404), resp.text)
        self.assertEqual([], self.env.agent.calls)
        self.assertEqual([], self.env.db.list_recoveries(server))
        self.assertEqual('protected', self.env.db.get_instance(server).status)

    def test_recovery_restarts_on_the_agent(self):
        server = self.ids['SERVER_A']
        resp = self.request('POST', '/v1/servers/%s/recoveries' % server,
                            body='{"restore_point_id": "%s"}'
                            % self.ids['RP_A1'])
        self.assertEqual(202, resp.status_int, resp.text)
        self.env.engine.wait(server, timeout=60)
        self.assertEqual(
            [('restart', {'instance': server,
                          'restore_point': self.ids['RP_A1']})],
            self.env.agent.calls)
        rec = self.env.db.list_recoveries(server)[0]
        self.assertEqual(('succeeded', resp.json['recovery']['id']),
                         (rec.state, rec.id))
