"""A real guest killed again and again, each time recovered by the
protection loop, loses nothing it made durable (issue 13, proof).

The real protection loop as tests/functional/test_protection_loop.py runs
it: ``ha-snapshot-manager`` and ``ha-snapshot-agent`` as processes on
RabbitMQ, a sqlite database, a file store, the ``qemu`` driver. The VM is
the real test guest (ha_snapshot/guest, booted by SeaBIOS under TCG): its
workload appends fsync'ed records and commits sqlite transactions,
reporting each on its serial console, where the test stamps it as it
arrives. :data:`KILLS` times: wait until the guest made a random (seeded,
logged in the ``timeline``) number of records durable, SIGKILL its QEMU,
let the agent's health watch report it and the manager restart it from the
newest restore point, then check what a user would:

* the restore point recovered to, replayed and checked on a copy
  (records.check_recovered): its file system is clean after journal
  replay, and it holds every record the guest had reported durable before
  the point's snapshot was taken (the agent logs that instant) and every
  record the guest's disk held when that run began, each good in its
  place, and every transaction committed before it;
* the restarted guest boots (its console, a file QEMU appends to), its own
  check of the same disk at boot agrees with the host's, and its workload
  goes on from the record after the last one on the disk.

A record appended but not yet fsynced at a snapshot may be torn in the
restore point (crash consistency); the guest goes on after it, so after a
few kills torn slots can sit between durable records: only the numbers
the guest reported durable (or found on its disk at boot) must be good.
Each round's numbers are the test's ``kills`` detail. Set
HA_SNAPSHOT_KILL_SEED to repeat a run's kill points.
"""

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import time
import uuid

import psutil
from testtools import content

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.db import engine as db_engine
from ha_snapshot.guest import boot as guest_boot
from ha_snapshot.guest import console as console_mod
from ha_snapshot.guest import records
from ha_snapshot import hypervisor
from ha_snapshot.tests.fixtures import guest as guest_fixture
from ha_snapshot.tests.fixtures import qemu as qemu_fixture
from ha_snapshot.tests.fixtures import services
from ha_snapshot.tests.functional import daemons

KILLS = 10
MAX_RECORDS_BEFORE_KILL = 150
"""A run is killed after 1..this many records of its own (~0-2 s of its
workload under TCG)."""
PROJECT = 'test-project'
BOOT_TIMEOUT = 90
RECORD_TIMEOUT = 60
RECOVERY_TIMEOUT = 60
SEED_ENV = 'HA_SNAPSHOT_KILL_SEED'
TAKEN = re.compile(r'durable as ([0-9a-f-]{36}) \(\d+ bytes sent\), '
                   r'taken at ([\d.]+)')


@dataclasses.dataclass
class Run:
    """One life of the guest: its first boot or a restart."""
    console: console_mod.Console
    started: float
    """Wall time before which it wrote nothing (its QEMU was not up)."""
    held: frozenset
    """Record numbers good on its disk when it began: the restore point's
    (they are its disk's base and must stay)."""
    held_transactions: int
    pid: int
    popen: object = None
    """Our Popen of its QEMU (the first run's): reaped by the test."""


class ProtectedGuestTestCase(daemons.DaemonsTestCase):
    """The real guest protected by the real daemons: start it, kill it,
    ask when a restore point was taken and what it must hold (also for
    tests/functional/test_guest_disks.py)."""

    def setUp(self):
        super().setUp()
        qemu_fixture.require_qemu()
        self.image = guest_fixture.image()
        self.runs = []
        # NOTE: registered before the daemons start, so it runs after they
        # are stopped (the agent would "recover" a VM killed here).
        self.addCleanup(self._stop_runs)

    def _stop_runs(self):
        for run in self.runs:
            run.console.close()
            if run.popen is not None and run.popen.poll() is None:
                run.popen.kill()
                run.popen.wait(30)

    # --- helpers -----------------------------------------------------------

    def start_guest(self, data_disk: bool = False, paused: bool = False,
                    guest_agent: bool = False, **protect) -> tuple:
        """The guest on its own copy of the image's disk (and of its data
        disk: ``data_disk``), protected: (its instance, the first Run, the
        restarted runs' console file). ``paused``: restarts start it
        paused, with a QMP socket of the test's own (``self.test_qmp``)
        to let it run; ``guest_agent``: the spec names the guest agent's
        port (a restart gives the VM that port again: a memory state
        resumes only in a QEMU with the same devices); ``protect``: more
        keys of the protect spec."""
        work = self.path('vm')
        os.makedirs(work)
        disk = os.path.join(work, 'vm0.qcow2')
        shutil.copyfile(self.image.disk, disk)
        data = None
        if data_disk:
            data = os.path.join(work, 'vm0-data2.qcow2')
            shutil.copyfile(self.image.data_disk, data)
        spec, paths = guest_boot.spec(self.image, 'vm0', work, disk,
                                      kernel_boot=False, data_disk=data)
        started = time.time()
        vm, console = guest_boot.start(self.driver, spec, paths)
        run = Run(console, started, frozenset(), 0, vm.pid,
                  vm.process.popen)
        self.runs.append(run)
        node = self.driver.disks(vm)[0].name
        # NOTE: QMP serves one client: the agent attaches on its own.
        self.driver.detach(vm)
        serial_log = os.path.join(work, 'vm0.restarted.console')
        vm_opts = {'machine': 'q35', 'accel': 'tcg',
                   'memory_mb': spec.memory_mb, 'node': node,
                   'device': 'vd0', 'paused': paused,
                   'serial_log': serial_log}
        self.test_qmp = os.path.join(work, 'vm0-test.qmp')
        if paused:
            vm_opts['extra_args'] = [
                '-qmp', 'unix:%s,server=on,wait=off' % self.test_qmp]
        if guest_agent:
            protect['qga_path'] = spec.agent_path
        inst = str(uuid.uuid4())
        self.svc.db.create_instance(inst, PROJECT, host=self.svc.host,
                                    status='protecting', driver='qemu')
        agent_rpcapi.AgentAPI(
            self.transport, signer=self.svc.signer()).protect(
            self.svc.host, inst, PROJECT, {
                'name': spec.name, 'qmp_path': spec.qmp_path,
                'pid': vm.pid, 'log_path': spec.log_path, 'disk': node,
                'disk_path': disk,
                'vm': vm_opts, **protect})
        self.qmp_path = spec.qmp_path
        return inst, run, serial_log

    def kill(self, run: Run) -> float:
        """SIGKILL the run's QEMU (checked by its command line); return
        once it is dead (it writes no more console)."""
        with open('/proc/%d/cmdline' % run.pid, 'rb') as f:
            self.assertIn(self.qmp_path.encode(), f.read())
        os.kill(run.pid, signal.SIGKILL)
        killed = time.time()
        if run.popen is not None:
            run.popen.wait(30)
        else:
            self.wait_for(lambda: _dead(run.pid), 10,
                          'QEMU pid %d to die of SIGKILL' % run.pid,
                          interval=0.01)
        return killed

    def taken_at(self, rp_id: str) -> float:
        """When the agent took the snapshot of restore point ``rp_id``
        (its log line for the delta made durable as it)."""
        def logged():
            for m in TAKEN.finditer(self.svc.agent.log()):
                if m.group(1) == rp_id:
                    return float(m.group(2))
            return None
        return self.wait_for(logged, 10, 'the agent to log when restore '
                             'point %s was taken' % rp_id)

    def required(self, taken: float) -> tuple:
        """(record numbers, transactions) the restore point whose snapshot
        was taken at ``taken`` must hold: what the run alive then held at
        its start or reported durable (committed) before it."""
        run = ([r for r in self.runs if r.started <= taken]
               or self.runs)[-1]
        numbers = set(run.held) | {
            n for n, t in run.console.durable if t < taken}
        return numbers, max(run.held_transactions,
                            run.console.committed_before(taken))


class GuestKillLoopTest(ProtectedGuestTestCase):

    # NOTE: ~2-3 minutes on a quiet 2-core host, 7-8 at a load of 30.
    TEST_TIMEOUT = 600

    def setUp(self):
        super().setUp()
        seed = int(os.environ.get(SEED_ENV) or time.time_ns() % (1 << 32))
        self.rng = random.Random(seed)
        self.mark('kill points from seed %d (%s=%d repeats them)'
                  % (seed, SEED_ENV, seed))
        self.rounds = []
        self.addDetail('kills', content.Content(
            content.UTF8_TEXT,
            lambda: [json.dumps(self.rounds, indent=1).encode()]))

    # --- the test ----------------------------------------------------------

    def test_ten_kills_lose_no_durable_record(self):
        t0 = time.monotonic()
        svc = self.start_services()
        self.driver = hypervisor.get_driver(svc.conf, 'qemu')
        inst, run, serial_log = self.start_guest()
        for kill in range(1, KILLS + 1):
            console = run.console
            if kill == 1:
                self.wait_for(lambda: svc.db.list_restore_points(inst),
                              RECOVERY_TIMEOUT,
                              'the first restore point of %s' % inst)
            _, m = console.wait_for(r'GUEST up records=(\d+)', BOOT_TIMEOUT)
            first = int(m.group(1)) + 1
            more = self.rng.randint(1, MAX_RECORDS_BEFORE_KILL)
            at = console.wait_durable(first - 1 + more, RECORD_TIMEOUT)
            killed = self.kill(run)
            self.mark('kill %d: SIGKILL QEMU (pid %d) after %d records of '
                      'this run (record %d durable)' % (kill, run.pid, more,
                                                        at))
            offset = services.file_size(serial_log)
            rows_before = svc.db.list_restore_points(inst)
            # NOTE: stamps lines from the moment the new QEMU writes.
            new_console = console_mod.FileConsole(
                serial_log, 'vm0-run%d' % kill, offset)
            new_console.connect()
            rec = self.wait_for(
                lambda: next((r for r in svc.db.list_recoveries(inst)
                              if r.state in ('succeeded', 'failed')
                              and _ts(r.created_at) > killed), None),
                RECOVERY_TIMEOUT, 'recovery %d of %s to end' % (kill, inst))
            recovered = time.time()
            self.assertEqual('succeeded', rec.state, rec.error)
            spec = svc.agent_state(inst)['spec']
            self.assertIn(rec.restore_point_id, spec['disk_path'])
            self.assertNotEqual(run.pid, spec['pid'])
            rp = [r for r in svc.db.list_restore_points(inst)
                  if r.id == rec.restore_point_id][0]
            # The newest: none made before the kill is newer.
            self.assertGreaterEqual(rp.number, max(
                [r.number for r in rows_before], default=0))
            taken = self.taken_at(rp.id)
            numbers, transactions = self.required(taken)
            export = self.path('rp-%d.raw' % kill)
            svc.store.export(inst, export, rp_id=rp.id)
            try:
                check = records.check_recovered(export, self.path())
            finally:
                os.unlink(export)
            got = check.records
            run = Run(new_console, killed, frozenset(
                n for n in range(1, got.whole + 1) if n not in got.bad),
                check.database.transactions if check.database else 0,
                spec['pid'])
            self.runs.append(run)
            # The restarted guest boots, checks its disk as the host did,
            # and goes on after its last record.
            _, verify = new_console.wait_for(r'VERIFY \w+.*', BOOT_TIMEOUT)
            _, up = new_console.wait_for(r'GUEST up records=(\d+)',
                                         BOOT_TIMEOUT)
            _, sqlite = new_console.wait_for(r'SQLITE \w+.*', BOOT_TIMEOUT)
            new_console.wait_durable(got.whole + 1, RECORD_TIMEOUT)
            booted = time.time()
            db = check.database
            self.rounds.append({
                'kill': kill, 'records_of_run_before_kill': more,
                'durable_at_kill': at, 'restore_point': rp.number,
                'snapshot_seconds_before_kill': round(killed - taken, 3),
                'records_durable_before_restore_point': len(numbers),
                'records_in_restore_point': got.records,
                'records_torn_or_out_of_order': len(got.bad),
                'records_lost': got.missing(numbers),
                'journal_replayed': check.journal_replayed,
                'fsck_clean': check.fsck_clean,
                'host_check': got.summary(),
                'guest_check': verify.group(0),
                'guest_up_records': int(up.group(1)),
                'transactions_committed_before_restore_point':
                    transactions,
                # NOTE: a point taken before the guest's first database
                # holds none; the guest then makes an empty one.
                'database': db.summary() if db else 'SQLITE ok '
                'transactions=0',
                'guest_database': sqlite.group(0),
                'recover_seconds': round(recovered - killed, 2),
                'first_record_seconds': round(booted - killed, 2)})
            self.mark('kill %d: recovered to #%d, %d durable records '
                      'required, %d found' % (kill, rp.number, len(numbers),
                                              got.records))
        self.mark('%d kills in %.0f s' % (KILLS, time.monotonic() - t0))
        self.assertEqual(KILLS, len(self.rounds))
        self.assertEqual([], [r for r in self.rounds if r['records_lost']
                              or not r['fsck_clean']
                              or r['host_check'] != r['guest_check']
                              or r['database'] != r['guest_database']
                              or not r['database'].startswith('SQLITE ok')
                              or int(r['database'].split('=')[1])
                              < r['transactions_committed_before_'
                                  'restore_point']
                              or r['guest_up_records'] !=
                              r['records_in_restore_point']
                              + r['records_torn_or_out_of_order']])
        self.assertEqual(0, sum(len(r['records_lost'])
                                for r in self.rounds))
        # Each kill came after records the guest made durable, and the
        # points recovered to held some of them: the check had work.
        self.assertGreater(sum(r['records_durable_before_restore_point']
                               for r in self.rounds), KILLS)
        self.assertEqual(KILLS, len(svc.db.list_recoveries(inst)))


def _ts(value) -> float:
    return db_engine.to_timestamp(value)


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
