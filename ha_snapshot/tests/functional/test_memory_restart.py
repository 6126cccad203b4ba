"""A real guest protected with ``[agent] memory_interval``, killed, and
restarted by the protection loop from a restore point that carries its
memory state: it resumes, it does not boot (issue 14, proof).

The real daemons as tests/functional/test_guest_kills.py runs them
(``ha-snapshot-manager`` and ``ha-snapshot-agent`` on RabbitMQ, sqlite,
a file store, the ``qemu`` driver) and the real test guest booted by
SeaBIOS. The agent saves the guest's memory with its snapshots; the
test waits for a restore point whose memory state is durable, kills
QEMU, and checks what a user would see: the recovery succeeded and the
agent resumed the guest from memory; the guest's console shows no boot;
its records go on from exactly the one after the last it had reported
when the restore point's memory was saved (the state's ``saved_at``,
QEMU's STOP event), so memory and disk were of the same instant and its
file system was never remounted (no journal replay).
"""

import os
import shutil
import signal
import time
import uuid

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.guest import boot as guest_boot
from ha_snapshot.guest import console as console_mod
from ha_snapshot import hypervisor
from ha_snapshot.storage import memory as store_memory
from ha_snapshot.tests.fixtures import guest as guest_fixture
from ha_snapshot.tests.fixtures import qemu as qemu_fixture
from ha_snapshot.tests.fixtures import services
from ha_snapshot.tests.functional import daemons

PROJECT = 'test-project'
BOOT_TIMEOUT = 90
RECORD_TIMEOUT = 60
RECOVERY_TIMEOUT = 180
BOOT_MARKS = ('GUEST up', 'VERIFY', 'SeaBIOS', 'Linux version')


class MemoryRestartTest(daemons.DaemonsTestCase):

    # NOTE: ~1.5 min on a quiet host; 3-6 at a load of 30.
    TEST_TIMEOUT = 600

    def test_restart_resumes_from_memory(self):
        qemu_fixture.require_qemu()
        image = guest_fixture.image()
        # NOTE: each snapshot with memory: the newest point's memory is
        # durable a few seconds after the point itself; the next point
        # needs its own memory save first, so the test kills the guest in
        # the time between.
        svc = self.start_services(options={'agent': {'memory_interval': 1},
                                           'policy': {'interval': 5}})
        driver = hypervisor.get_driver(svc.conf, 'qemu')
        work = self.path('vm')
        os.makedirs(work)
        disk = os.path.join(work, 'vm0.qcow2')
        shutil.copyfile(image.disk, disk)
        spec, paths = guest_boot.spec(image, 'vm0', work, disk,
                                      kernel_boot=False)
        vm, console = guest_boot.start(driver, spec, paths)
        popen = vm.process.popen
        self.addCleanup(console.close)
        self.addCleanup(lambda: popen.poll() is None and popen.kill())
        node = driver.disks(vm)[0].name
        driver.detach(vm)
        serial_log = os.path.join(work, 'vm0.restarted.console')
        inst = str(uuid.uuid4())
        svc.db.create_instance(inst, PROJECT, host=svc.host,
                               status='protecting', driver='qemu')
        agent_rpcapi.AgentAPI(self.transport, signer=svc.signer()).protect(
            svc.host, inst, PROJECT, {
                'name': spec.name, 'qmp_path': spec.qmp_path,
                'pid': vm.pid, 'log_path': spec.log_path, 'disk': node,
                'disk_path': disk, 'qga_path': spec.agent_path,
                'vm': {'machine': 'q35', 'accel': 'tcg',
                       'memory_mb': spec.memory_mb, 'node': node,
                       'device': 'vd0', 'paused': False,
                       'serial_log': serial_log}})
        console.wait_durable(10, BOOT_TIMEOUT)

        def newest_with_memory():
            points = svc.db.list_restore_points(inst)
            if len(points) >= 2 and points[-1].memory_state:
                return points[-1]
            return None
        newest = self.wait_for(newest_with_memory, RECOVERY_TIMEOUT,
                               'a second restore point of %s, with its '
                               'memory state' % inst)
        self.mark('restore point #%d carries memory' % newest.number)
        os.kill(vm.pid, signal.SIGKILL)
        killed = time.time()
        popen.wait(30)
        offset = services.file_size(serial_log)
        new_console = console_mod.FileConsole(serial_log, 'vm0-resumed',
                                              offset)
        new_console.connect()
        self.addCleanup(new_console.close)
        rec = self.wait_for(
            lambda: next((r for r in svc.db.list_recoveries(inst)
                          if r.state in ('succeeded', 'failed')), None),
            RECOVERY_TIMEOUT, 'the recovery of %s to end' % inst)
        self.assertEqual('succeeded', rec.state, rec.error)
        points = {r.id: r for r in svc.db.list_restore_points(inst)}
        rp = points[rec.restore_point_id]
        self.assertTrue(rp.memory_state, 'the newest point has no memory '
                        'state: the test cannot tell a resume')
        state = store_memory.get(
            svc.store, svc.store.get_restore_point(inst, rp.id))
        saved_at = state['saved_at']
        at_stop = console.durable_before(saved_at)
        near_stop = {n for n, t in console.durable if t <= saved_at + 0.5}
        self.assertIn('resumed from memory', svc.agent.log())
        first = new_console.wait_durable(1, RECORD_TIMEOUT)
        new_console.wait_durable(first + 5, RECORD_TIMEOUT)
        resumed = [n for n, _t in new_console.durable]
        self.mark('resumed at record %d; %d durable at the saved instant; '
                  'running %.2f s after the kill' % (
                      resumed[0], at_stop,
                      new_console.durable[0][1] - killed))
        self.assertGreaterEqual(resumed[0] - 1, at_stop)
        self.assertIn(resumed[0] - 1, near_stop)
        self.assertEqual(list(range(resumed[0], resumed[0] + len(resumed))),
                         resumed)
        for line in new_console.lines:
            for mark in BOOT_MARKS:
                self.assertNotIn(mark, line.text)
