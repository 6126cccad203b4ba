"""The real guest writing two data disks, protected, SIGKILLed and
recovered (issue 14, proof), on the parts test_guest_kills.py runs:
``ha-snapshot-manager`` and ``ha-snapshot-agent`` processes on RabbitMQ,
a file store, the ``qemu`` driver, the test guest booted by SeaBIOS under
TCG with its root disk and a second data disk (ha_snapshot/guest: each
record appended and fsync'ed on the root's ext4 partition, ``DURABLE n``,
then on the data disk's, ``DURABLE2 n``).

* Without memory: the restarted VM (started paused) runs on both disks of
  the restore point byte for byte; each disk, replayed and checked on a
  copy, holds every record the guest reported durable on it before the
  point's snapshot was taken; let run, the guest boots, checks both disks
  as the host did and goes on after the last record of each.
* With memory (``memory: always``): the recovery resumes the guest from
  a point whose memory was saved while it wrote both disks: no boot on its
  console, its records go on from the one after the last it had reported
  at the saved instant, on both disks; the agent's resume time (the start
  of the new QEMU to the guest running) is the test's ``resume`` detail.
"""

import json
import os
import re

from testtools import content

from ha_snapshot.guest import console as console_mod
from ha_snapshot.guest import records
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import qmp
from ha_snapshot.storage import memory as memory_store
from ha_snapshot.tests.fixtures import services
from ha_snapshot.tests.functional import test_disks
from ha_snapshot.tests.functional import test_guest_kills as kills
from ha_snapshot.tests.functional import test_memory_state

BOOT_TIMEOUT = kills.BOOT_TIMEOUT
RECORD_TIMEOUT = kills.RECORD_TIMEOUT
RECOVERY_TIMEOUT = kills.RECOVERY_TIMEOUT
RECORDS_BEFORE = 20
"""Records the guest makes durable on each disk before the test looks
for a restore point taken after them."""
RESUMED = 'restarted from restore point %s \\(pid \\d+; .*resumed from ' \
          'memory in ([0-9.]+) s\\)'


class GuestTwoDisksTest(kills.ProtectedGuestTestCase):

    # NOTE: ~1 min on a quiet 2-core host; the waits allow a busy one.
    TEST_TIMEOUT = 400

    def setUp(self):
        super().setUp()
        self.numbers = {}
        self.addDetail('numbers', content.Content(
            content.UTF8_TEXT,
            lambda: [json.dumps(self.numbers, indent=1).encode()]))

    def start(self, **kwargs) -> tuple:
        """Daemons and the protected two-disk guest, writing both disks:
        (instance, its first Run, the restarted runs' console file)."""
        svc = self.start_services()
        self.driver = hypervisor.get_driver(svc.conf, 'qemu')
        inst, run, serial_log = self.start_guest(data_disk=True, **kwargs)
        _, m = run.console.wait_for(r'GUEST up2 records=(\d+)',
                                    BOOT_TIMEOUT)
        self.assertEqual('0', m.group(1))
        return inst, run, serial_log

    def wait_written(self, run) -> float:
        """Wait until the guest made RECORDS_BEFORE records durable on
        each disk: the wall time then."""
        run.console.wait_durable(RECORDS_BEFORE, RECORD_TIMEOUT)
        run.console.wait_durable(RECORDS_BEFORE, RECORD_TIMEOUT, disk=2)
        return self.mark('%d records durable on each disk'
                         % RECORDS_BEFORE)

    def kill_and_recover(self, inst: str, run) -> tuple:
        """SIGKILL the guest: (the recovery, its restore point row)."""
        rows_before = self.svc.db.list_restore_points(inst)
        killed = self.kill(run)
        self.mark('SIGKILL QEMU (pid %d), records %d/%d durable'
                  % (run.pid, run.console.durable[-1][0],
                     run.console.durable2[-1][0]))
        rec = self.wait_for(
            lambda: next((r for r in self.svc.db.list_recoveries(inst)
                          if r.state in ('succeeded', 'failed')
                          and kills._ts(r.created_at) > killed), None),
            RECOVERY_TIMEOUT, 'the recovery of %s to end' % inst)
        self.assertEqual('succeeded', rec.state, rec.error)
        rp = [r for r in self.svc.db.list_restore_points(inst)
              if r.id == rec.restore_point_id][0]
        self.assertGreaterEqual(rp.number, max(
            [r.number for r in rows_before], default=0))
        self.mark('recovered to #%d' % rp.number)
        return rec, rp

    def test_two_disks_restored_and_records_kept(self):
        inst, run, serial_log = self.start(paused=True)
        written = self.wait_written(run)
        self.wait_for(
            lambda: any(t > written for t in self.taken().values()),
            RECOVERY_TIMEOUT, 'a restore point of %s taken after %.3f'
            % (inst, written))
        offset = services.file_size(serial_log)
        rec, rp = self.kill_and_recover(inst, run)
        taken = self.taken_at(rp.id)
        self.assertGreater(taken, written)

        # The paused VM runs on both disks of the point, byte for byte.
        disks = test_disks.split_point(self.svc.store, inst, rp.id,
                                       self.path('exports'))
        self.assertEqual(['vd0', 'vd1'], sorted(disks))
        spec = self.svc.agent_state(inst)['spec']
        files = {'vd0': spec['disk_path'],
                 'vd1': os.path.join(os.path.dirname(spec['disk_path']),
                                     'restored-%s-vd1.qcow2' % rp.id)}
        with open('/proc/%d/cmdline' % spec['pid'], 'rb') as f:
            cmdline = f.read()
        for device in ('vd0', 'vd1'):
            self.assertIn(files[device].encode(), cmdline)
            self.assertEqual('', test_disks.differs(disks[device],
                                                    files[device]))
        self.mark('both disks equal restore point #%d' % rp.number)

        # Each disk holds every record reported durable on it before the
        # point was taken (this run began on empty disks).
        checks = {}
        for device, disk in (('vd0', 1), ('vd1', 2)):
            check = records.check_recovered(disks[device], self.path())
            durable = run.console.durable_before(taken, disk=disk)
            got = check.records
            self.numbers[device] = {
                'durable_before_point': durable,
                'records_in_point': got.records, 'torn': len(got.bad),
                'tail_bytes': got.tail_bytes, 'fsck_clean': check.fsck_clean,
                'journal_replayed': check.journal_replayed,
                'host_check': got.summary()}
            self.assertTrue(check.fsck_clean, check.fsck_output)
            self.assertGreaterEqual(durable, RECORDS_BEFORE)
            self.assertEqual([], got.missing(range(1, durable + 1)))
            checks[device] = got

        # Let run, it boots, agrees with the host and goes on on both.
        console = console_mod.FileConsole(serial_log, 'vm0-restarted',
                                          offset)
        console.connect()
        self.addCleanup(console.close)
        monitor = qmp.QmpClient(self.test_qmp, vm='vm0')
        monitor.connect(10)
        self.addCleanup(monitor.close)
        monitor.execute('cont', timeout=30)
        for tag, device in (('VERIFY', 'vd0'), ('VERIFY2', 'vd1')):
            _, m = console.wait_for(r'%s \w+.*' % tag, BOOT_TIMEOUT)
            self.assertEqual(checks[device].summary().replace(
                'VERIFY', tag), m.group(0))
        for tag, device in (('up', 'vd0'), ('up2', 'vd1')):
            _, m = console.wait_for(r'GUEST %s records=(\d+)' % tag,
                                    BOOT_TIMEOUT)
            self.assertEqual(checks[device].whole, int(m.group(1)))
        console.wait_durable(checks['vd0'].whole + 1, RECORD_TIMEOUT)
        console.wait_durable(checks['vd1'].whole + 1, RECORD_TIMEOUT,
                             disk=2)
        self.assertEqual(checks['vd0'].whole + 1, console.durable[0][0])
        self.assertEqual(checks['vd1'].whole + 1, console.durable2[0][0])

    def test_two_disks_resume_from_memory(self):
        inst, run, serial_log = self.start(memory='always',
                                           guest_agent=True)
        written = self.wait_written(run)
        store = self.svc.store

        def saved_after():
            rows = [r for r in self.svc.db.list_restore_points(inst)
                    if r.memory_state]
            if not rows:
                return None
            state = memory_store.get(store, store.get_restore_point(
                inst, rows[-1].id))
            if state and (state['saved_at'] or 0) > written:
                return state
            return None
        self.wait_for(saved_after, RECOVERY_TIMEOUT,
                      'a restore point of %s with a memory state saved '
                      'after %.3f' % (inst, written))
        offset = services.file_size(serial_log)
        rec, rp = self.kill_and_recover(inst, run)
        self.assertTrue(rp.memory_state)
        saved = memory_store.get(store, store.get_restore_point(
            inst, rp.id))['saved_at']
        self.assertGreater(saved, written)
        m = self.wait_for(
            lambda: re.search(RESUMED % rp.id, self.svc.agent.log()),
            10, 'the agent to log that it resumed %s from memory' % inst)
        resume_seconds = float(m.group(1))

        console = console_mod.FileConsole(serial_log, 'vm0-resumed', offset)
        console.connect()
        self.addCleanup(console.close)
        self.numbers['resume'] = {'resume_seconds': resume_seconds,
                                  'restore_point': rp.number}
        for disk, device in ((1, 'vd0'), (2, 'vd1')):
            marks = (run.console.durable2 if disk == 2
                     else run.console.durable)
            at_stop = run.console.durable_before(saved, disk=disk)
            # NOTE: a line QEMU wrote just before STOP may reach the host
            # a little later; nothing the guest printed after it can.
            near_stop = {n for n, t in marks if t <= saved + 0.5}
            console.wait_durable(at_stop + 5, RECORD_TIMEOUT, disk=disk)
            resumed = [n for n, _t in (console.durable2 if disk == 2
                                       else console.durable)]
            first = resumed[0]
            self.numbers['resume'][device] = {
                'durable_at_saved_instant': at_stop,
                'first_resumed': first}
            self.assertGreaterEqual(at_stop, RECORDS_BEFORE)
            self.assertGreaterEqual(first - 1, at_stop)
            self.assertIn(first - 1, near_stop)
            self.assertEqual(list(range(first, first + len(resumed))),
                             resumed)
        for line in console.lines:
            for mark in test_memory_state.BOOT_MARKS + ('VERIFY',):
                self.assertNotIn(mark, line.text)
        self.addDetail('resume', content.text_content(json.dumps(
            self.numbers['resume'])))
        self.mark('resumed from memory in %.3f s' % resume_seconds)

    def taken(self) -> dict:
        """Restore point id -> when its snapshot was taken (agent log)."""
        return {m.group(1): float(m.group(2))
                for m in kills.TAKEN.finditer(self.svc.agent.log())}
