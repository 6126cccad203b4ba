"""The policy a protect cast names is the one the agent runs.

A real manager and agent in this process over oslo.messaging's fake://
transport, real QEMU VMs (``-machine none``) driven over QMP by the qemu
driver; ``[policy] name`` is ``adaptive`` and the specs choose otherwise.
"""

import logging
import os
import signal

import fixtures

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.agent import service as agent_service
from ha_snapshot.agent import state as state_mod
from ha_snapshot import demo
from ha_snapshot.db import migration
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.manager import service as manager_service
from ha_snapshot.policy import adaptive
from ha_snapshot.policy import fixed
from ha_snapshot import rpc
from ha_snapshot.tests import base


class AgentPolicyChoiceTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        work = self.path('work')
        os.makedirs(work)
        # NOTE: registered first, run last: the VMs outlive the services.
        self.pids = []
        self.addCleanup(lambda: [_kill(pid) for pid in self.pids])
        self.conf = demo.make_conf(work, interval=2.0, rpo_target=5.0)
        migration.upgrade(self.conf)
        self.transport = rpc.get_transport(self.conf, url='fake://')
        self.driver = hypervisor.get_driver(self.conf, 'qemu')
        self.manager = manager_service.ManagerService(self.conf,
                                                      self.transport)
        self.agent = agent_service.AgentService(self.conf, self.transport,
                                                self.driver)
        self.manager.start()
        self.addCleanup(self.manager.stop)
        self.agent.start()
        self.addCleanup(self.agent.stop)
        self.api = agent_rpcapi.AgentAPI(self.transport)
        self.work = work

    def start_vm(self, name):
        disk = self.make_qcow2('%s.qcow2' % name, 64 * base.MiB)
        spec = hv_base.VMSpec(
            name=name, qmp_path=os.path.join(self.work, '%s.qmp' % name),
            log_path=os.path.join(self.work, '%s.log' % name),
            disks=(hv_base.DiskSpec(path=disk),))
        vm = self.driver.start(spec)
        self.pids.append(vm.pid)
        node = self.driver.disks(vm)[0].name
        # NOTE: QMP serves one client: the agent attaches on its own.
        self.driver.detach(vm)
        return {'name': name, 'qmp_path': spec.qmp_path, 'pid': vm.pid,
                'log_path': spec.log_path, 'disk': node, 'disk_path': disk,
                'vm': {'machine': 'none', 'node': node}}

    def protect(self, name, **extra):
        inst = base.new_uuid()
        self.manager.db.create_instance(inst, 'p', host=demo.HOST,
                                        status='protecting', driver='qemu')
        self.api.protect(demo.HOST, inst, 'p',
                         dict(self.start_vm(name), **extra))
        return inst

    def decided(self, policy, inst):
        return ('Snapshot policy %s, instance %s: next snapshot'
                % (policy, inst)) in self.log.output

    def test_the_spec_policy_is_run_else_the_configured_one(self):
        chosen = self.protect('chosen', policy='fixed')
        default = self.protect('default')
        base.wait_for(lambda: self.decided('fixed', chosen), 60,
                      'a decision of the fixed policy for %s' % chosen)
        base.wait_for(lambda: self.decided('adaptive', default), 60,
                      'a decision of the adaptive policy for %s' % default)
        self.assertFalse(self.decided('adaptive', chosen))
        self.assertIsInstance(self.agent.instances[chosen].agent.policy,
                              fixed.FixedPolicy)
        self.assertIsInstance(self.agent.instances[default].agent.policy,
                              adaptive.AdaptivePolicy)
        # The choice is in the state file: a restarted agent keeps it.
        st = state_mod.InstanceState.load(state_mod.InstanceState.path_for(
            self.conf.agent.state_dir, chosen))
        self.assertEqual('fixed', st.spec.policy)
        self.agent.reload()
        self.assertIsInstance(self.agent.instances[chosen].agent.policy,
                              fixed.FixedPolicy)

        # A protect naming another policy switches the running agent.
        self.api.protect(demo.HOST, default, 'p',
                         self.agent.instances[default].agent.state.spec
                         .replace(policy='fixed'))
        base.wait_for(lambda: self.decided('fixed', default), 60,
                      'a decision of the fixed policy for %s' % default)
        self.assertIn('Instance %s: snapshot policy now fixed' % default,
                      self.log.output)
        st = state_mod.InstanceState.load(state_mod.InstanceState.path_for(
            self.conf.agent.state_dir, default))
        self.assertEqual('fixed', st.spec.policy)

    def test_an_unknown_policy_is_refused_with_a_clear_error(self):
        inst = self.protect('unknown', policy='sometimes')
        base.wait_for(lambda: 'Instance %s not protected' % inst
                      in self.log.output, 30, 'the refusal of %s' % inst)
        self.assertIn("its spec asks for the snapshot policy 'sometimes', "
                      "which is not installed on %s (available: " % demo.HOST,
                      self.log.output)
        self.assertNotIn(inst, self.agent.instances)
        self.assertFalse(os.path.exists(state_mod.InstanceState.path_for(
            self.conf.agent.state_dir, inst)))
        # Nothing of it went to the manager either.
        self.assertEqual([], self.manager.db.list_restore_points(inst))


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
