"""A restart recovery restarts the VM once per recovery (issue 12, item
3): a manager replica that takes a recovery over after the restart must
not kill the VM the first replica's restart started."""

import os
import types

import fixtures

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.agent import service as agent_service
from ha_snapshot.agent import state as state_mod
from ha_snapshot import rpc
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import agent as agent_fixture

INSTANCE = '5d7e0c4a-3b1f-4e2a-9c8d-6f5e4d3c2b1a'


class Taken(Exception):
    """The restart went on to take the VM down."""


class RestartOnceTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        conf = base.make_conf(self.store_dir, agent__host='c1')
        self.svc = agent_service.AgentService(conf)
        st = state_mod.InstanceState(
            instance=INSTANCE, project='p1',
            spec={'name': 'vm0', 'qmp_path': '/run/vm0.qmp',
                  'pid': os.getpid(), 'disk_path': '/srv/vm0.qcow2',
                  'vm': {'machine': 'none', 'node': 'disk0'}},
            restarted_by='rec-1')
        self.svc.instances[INSTANCE] = types.SimpleNamespace(
            agent=types.SimpleNamespace(state=st))

        def taken(*args, **kwargs):
            raise Taken()
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.agent.service.AgentService._take', taken))

    def test_the_same_recovery_gets_the_running_vm(self):
        self.assertEqual({'pid': os.getpid(), 'disk': '/srv/vm0.qcow2',
                          'already': True},
                         self.svc.restart(INSTANCE, 'rp-1', 'rec-1'))

    def test_another_recovery_or_none_restarts(self):
        self.assertRaises(Taken, self.svc.restart, INSTANCE, 'rp-1', 'rec-2')
        self.assertRaises(Taken, self.svc.restart, INSTANCE, 'rp-1')

    def test_the_same_recovery_restarts_a_vm_that_died_since(self):
        self.svc.instances[INSTANCE].agent.state.spec = (
            self.svc.instances[INSTANCE].agent.state.spec.replace(
                pid=2 ** 22 + 7))
        self.assertRaises(Taken, self.svc.restart, INSTANCE, 'rp-1', 'rec-1')

    def test_restarted_by_survives_the_state_file(self):
        st = self.svc.instances[INSTANCE].agent.state
        st.save(self.path('agent'))
        again = state_mod.InstanceState.load(state_mod.InstanceState.path_for(
            self.path('agent'), INSTANCE))
        self.assertEqual('rec-1', again.restarted_by)


class OldAgentTestCase(base.TestCase):
    """A manager asking an agent older than RPC 1.2 (no recovery id)."""

    def test_asked_again_without_the_recovery(self):
        conf = base.make_conf(self.store_dir)
        transport = rpc.get_transport(conf, url='fake:///')
        old = agent_fixture.RecordingAgent()
        server = rpc.get_server(transport, rpc.AGENT_TOPIC, 'c1', [old])
        server.start()
        self.addCleanup(server.wait)
        self.addCleanup(server.stop)
        api = agent_rpcapi.AgentAPI(transport, timeout=10)
        self.assertEqual({'instance': INSTANCE, 'restore_point': 'rp-1'},
                         api.restart('c1', INSTANCE, 'rp-1', timeout=10,
                                     recovery='rec-1'))
        self.assertEqual([('restart', {'instance': INSTANCE,
                                       'restore_point': 'rp-1'})], old.calls)
