"""The agent's side of a host evacuation (issue 11): the new host's agent
adopts an evacuated server on the restore point it was rebuilt from; the
old host's agent, back, drops a server the manager says moved."""

import logging
import os
import types

import fixtures

from ha_snapshot.agent import instance as instance_mod
from ha_snapshot.agent import service as agent_service
from ha_snapshot.agent import state as state_mod
from ha_snapshot import exception
from ha_snapshot.tests import base

INSTANCE = '0b6f2d1e-8c4a-4f3b-9e2d-7a1c5b3e9f40'
SPEC = {'nova': True, 'uuid': INSTANCE, 'name': 'vm1'}


class AdoptTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir, agent__host='compute2',
                                   agent__state_dir=self.path('agent'))
        self.svc = agent_service.AgentService(self.conf)
        self.state_dir = self.conf.agent.state_dir

    def load(self):
        return state_mod.InstanceState.load(
            state_mod.InstanceState.path_for(self.state_dir, INSTANCE))

    def test_an_unknown_server_is_adopted_on_the_restore_point(self):
        self.svc._adopt(INSTANCE, 'p1', SPEC, 'rp-7')
        st = self.load()
        self.assertEqual(('p1', 'rp-7', 'libvirt', INSTANCE, 'vm1'),
                         (st.project, st.parent, st.spec.driver,
                          st.spec.domain, st.spec.name))
        self.assertEqual([], st.pending)
        # Asked again (a resumed recovery): what is known stays.
        self.svc._adopt(INSTANCE, 'p2', SPEC, 'rp-8')
        self.assertEqual(('p1', 'rp-7'), (self.load().project,
                                          self.load().parent))

    def test_no_project_no_adoption(self):
        e = self.assertRaises(exception.InvalidProtectionSpec,
                              self.svc._adopt, INSTANCE, None, SPEC, 'rp-7')
        self.assertIn('names no project', str(e))
        self.assertFalse(os.path.exists(state_mod.InstanceState.path_for(
            self.state_dir, INSTANCE)))

    def test_a_spec_the_agent_cannot_use_is_refused(self):
        self.assertRaises(exception.InvalidProtectionSpec, self.svc._adopt,
                          INSTANCE, 'p1', {'name': 'vm1'}, 'rp-7')


class MovedTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir, agent__host='compute1',
                                   agent__state_dir=self.path('agent'))
        self.svc = agent_service.AgentService(self.conf)
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.st = state_mod.InstanceState(instance=INSTANCE, project='p1',
                                          spec=SPEC)
        self.st.save(self.conf.agent.state_dir)
        self.path = state_mod.InstanceState.path_for(
            self.conf.agent.state_dir, INSTANCE)
        self.moved = exception.InstanceMoved(
            sender='host:compute1', method='register_instance',
            instance=INSTANCE, host='compute2')

    def test_a_server_that_moved_is_dropped_not_its_domain(self):
        stopped, detached = [], []
        agent = types.SimpleNamespace(
            state=self.st, vm='the-old-domain',
            driver=types.SimpleNamespace(detach=detached.append,
                                         stop_tracking=self.fail))
        self.svc.instances[INSTANCE] = types.SimpleNamespace(
            agent=agent, stop=lambda: stopped.append(True))
        self.svc.moved(INSTANCE, self.moved)
        self.assertEqual(([True], ['the-old-domain']), (stopped, detached))
        self.assertNotIn(INSTANCE, self.svc.instances)
        self.assertFalse(os.path.exists(self.path))
        self.assertIn('moved to compute2', self.log.output)
        # Said again (a report after the registration): nothing more.
        self.svc.moved(INSTANCE, self.moved)

    def test_a_server_only_on_disk_is_dropped(self):
        self.svc.moved(INSTANCE, self.moved)
        self.assertFalse(os.path.exists(self.path))

    def test_the_snapshot_loop_hands_it_over_when_registration_says_so(self):
        told = []

        class Manager:
            def register_instance(self, *args):
                raise exception.InstanceMoved(
                    sender='host:compute1', method='register_instance',
                    instance=INSTANCE, host='compute2')

        class Driver:
            def attach(self, *args, **kwargs):
                raise AssertionError('the old domain was looked at')

        agent = instance_mod.SnapshotAgent(
            self.conf, Driver(), Manager(), self.st, policy=None,
            host='compute1', on_moved=lambda i, e: told.append((i, str(e))))
        agent.run()
        self.assertEqual([(INSTANCE, str(self.moved))], told)
