"""The protection loop on real parts, each daemon its own process.

Real QEMU VMs (q35, paused: a virtio-blk device and no guest code), a
private RabbitMQ, ``ha-snapshot-manager`` and ``ha-snapshot-agent`` started
from a config file (fixtures/services.py), a sqlite database and a file
store. The test records each instance in the manager's database and casts
``protect`` to the agent, as the manager's notification listener does.

QMP serves one client per socket and the agent holds the VM's own: each VM
gets a second QMP monitor (``-qmp`` in ``VMSpec.extra_args``) on which the
test writes into the disk's guest device with ``qemu-io``, as a guest
would (through the device, so a write always lands in the active overlay
whatever the agent does to the chain). Every write goes to fresh blocks and
is logged with its start and end times: numbered 64 KiB pattern blocks at
a steady pace, and, where a test needs a large delta to kill something in
the middle of, 32 MiB of random 1 MiB blocks (``write -s``; each one
chunk of the store, so that its merge can be seen as it happens).

What the tests read is what an operator can: the database (restore points,
instance status, recoveries), the store (exports, ``ha-snapshot-manage
store verify``), the agent's state files and the daemons' logs. A restore
point is checked against the write log by containment: restore point
k+AHEAD holds every write that ended before restore point k was
recorded (the agent snapshots while earlier deltas ship, but never more
than ``[agent] max_pending_deltas`` (AHEAD) ahead of the acks: that
snapshot was taken after k was
acknowledged), and restore point k holds no write begun after it was
recorded.

Each test waits only on bounded conditions (:meth:`wait_for`) that name
what they wait for; a timeout attaches both daemons' logs. What was
waited for, and when, is the test's ``timeline`` detail.
"""

import base64
import dataclasses
import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
import zstandard

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.db import engine as db_engine
from ha_snapshot import delta as delta_mod
from ha_snapshot import exception
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.hypervisor import qmp
from ha_snapshot.manager import rpcapi as manager_rpcapi
from ha_snapshot import rpc_auth
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import database as db_fixtures
from ha_snapshot.tests.fixtures import mariadb
from ha_snapshot.tests.fixtures import qemu as qemu_fixture
from ha_snapshot.tests.fixtures import rabbitmq
from ha_snapshot.tests.fixtures import services
from ha_snapshot.tests.functional import daemons

KiB = 1 << 10
MiB = 1 << 20
DISK_SIZE = 1024 * MiB
PATTERN_BLOCK = 64 * KiB
PATTERN_AREA = 64 * MiB
BALLAST_BLOCK = MiB
PROJECT = 'test-project'
# NOTE: how many snapshots the agent may take ahead of the acks: [agent]
# max_pending_deltas (its default; no test raises it).
AHEAD = 3
_FAILURE = re.compile(r'(?i)\b(fail(ed|ure)?|error|not found|cannot)\b')


def ts(value) -> float:
    """Epoch seconds of a database time (naive UTC)."""
    return db_engine.to_timestamp(value)


@dataclasses.dataclass
class Write:
    offset: int
    length: int
    pattern: int | None
    """The byte repeated over the block, or None for random data."""
    digest: str | None
    """sha256 of random data."""
    started: float
    ended: float

    def holds(self, data: bytes) -> bool:
        if self.pattern is not None:
            return data == bytes([self.pattern]) * self.length
        return hashlib.sha256(data).hexdigest() == self.digest


class Guest:
    """A test VM: started by the qemu driver, then left to the agent.

    ``monitor`` is the test's own QMP connection, on a second socket.
    """

    def __init__(self, driver, workdir: str, name: str):
        self.driver = driver
        self.name = name
        self.workdir = workdir
        self.disk_path = os.path.join(workdir, '%s.qcow2' % name)
        self.qmp_path = os.path.join(workdir, '%s.qmp' % name)
        self.test_qmp_path = os.path.join(workdir, '%s-test.qmp' % name)
        self.log_path = os.path.join(workdir, '%s.log' % name)
        self.writes = []
        self.lock = threading.Lock()
        self.ballast_next = PATTERN_AREA
        self.popen = None
        self.monitor = None

    def make_disks(self) -> tuple:
        """Create the VM's disk files: its DiskSpecs, the root first
        (subclasses add more)."""
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        self.disk_path, str(DISK_SIZE)], check=True,
                       timeout=60)
        return (hv_base.DiskSpec(path=self.disk_path, node='disk0',
                                 device='vd0'),)

    def extra_args(self) -> tuple:
        """More QEMU arguments (subclasses: more devices)."""
        return ()

    def start(self) -> 'Guest':
        spec = hv_base.VMSpec(
            name=self.name, machine='q35', paused=True,
            disks=self.make_disks(),
            qmp_path=self.qmp_path, log_path=self.log_path,
            extra_args=self.extra_args() + (
                '-qmp', 'unix:%s,server=on,wait=off' % self.test_qmp_path))
        vm = self.driver.start(spec)
        self.pid = vm.pid
        self.popen = vm.process.popen
        found = self.driver.disks(vm)
        self.disk_name, self.device = found[0].name, found[0].device
        self.disk_names = sorted(d.name for d in found)
        # NOTE: qemu-io -d takes the device's qdev path.
        self.qdev = {d.name: d.device for d in found}
        # NOTE: QMP serves one client per socket: the agent attaches to
        # the main one on its own; the test keeps the second.
        self.driver.detach(vm)
        self.monitor = qmp.QmpClient(self.test_qmp_path, vm=self.name)
        self.monitor.connect(10)
        return self

    def agent_spec(self) -> dict:
        return {'name': self.name, 'qmp_path': self.qmp_path,
                'pid': self.pid, 'log_path': self.log_path,
                'disk': self.disk_name, 'disk_path': self.disk_path,
                'vm': {'machine': 'q35', 'paused': True, 'node': 'disk0',
                       'device': 'vd0'}}

    def qemu_io(self, command: str, disk: str | None = None) -> None:
        """``command`` on disk ``disk`` (default the root) through its
        guest device, as a guest write would go."""
        device = self.qdev[disk] if disk else self.device
        before = services.file_size(self.log_path)
        out = self.monitor.execute(
            'human-monitor-command',
            {'command-line': 'qemu-io -d %s "%s"' % (device, command)},
            timeout=30)
        if out.strip():
            raise hv_base.HmpError(vm=self.name, command=command,
                                   reason=out.strip())
        said = services.read_from(self.log_path, before)
        if _FAILURE.search(said):
            raise hv_base.HmpError(vm=self.name, command=command,
                                   reason='qemu-io said: %s' % said[-500:])

    def _record(self, write: Write) -> Write:
        with self.lock:
            self.writes.append(write)
        return write

    def write_pattern(self, offset: int, length: int, pattern: int) -> Write:
        started = time.time()
        self.qemu_io('write -P 0x%02x %d %d' % (pattern, offset, length))
        return self._record(Write(offset, length, pattern, None, started,
                                  time.time()))

    def write_random(self, offset: int, length: int) -> Write:
        data = os.urandom(length)
        src = os.path.join(self.workdir, '%s-src-%d' % (self.name, offset))
        with open(src, 'wb') as f:
            f.write(data)
        try:
            started = time.time()
            self.qemu_io('write -s %s %d %d' % (src, offset, length))
            ended = time.time()
        finally:
            os.unlink(src)
        return self._record(Write(offset, length, None,
                                  hashlib.sha256(data).hexdigest(), started,
                                  ended))

    def fill(self, nbytes: int) -> list:
        """Random, incompressible data into fresh 1 MiB blocks (aligned on
        the store's chunks, so each block is one chunk of its own)."""
        out = []
        for _ in range(nbytes // BALLAST_BLOCK):
            with self.lock:
                offset = self.ballast_next
                self.ballast_next += BALLAST_BLOCK
            if offset + BALLAST_BLOCK > DISK_SIZE:
                raise AssertionError('the test disk is full of ballast')
            out.append(self.write_random(offset, BALLAST_BLOCK))
        return out

    def snapshot_writes(self) -> list:
        with self.lock:
            return list(self.writes)

    def kill(self) -> None:
        """SIGKILL the QEMU process (our child) and reap it."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(30)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        self.kill()

    def log_tail(self) -> str:
        return services.tail(self.log_path, 60)


class Workload(threading.Thread):
    """Numbered pattern blocks into fresh 64 KiB slots, at a steady pace,
    until stopped or until the VM is gone."""

    def __init__(self, guest: Guest, period: float = 0.05):
        super().__init__(name='workload-%s' % guest.name, daemon=True)
        self.guest = guest
        self.period = period
        self.stopped = threading.Event()
        self.error = None

    def run(self):
        slot = 0
        while not self.stopped.wait(self.period):
            if (slot + 1) * PATTERN_BLOCK > PATTERN_AREA:
                return
            try:
                self.guest.write_pattern(slot * PATTERN_BLOCK, PATTERN_BLOCK,
                                         1 + slot % 255)
            except exception.HaSnapshotException as e:
                self.error = e  # NOTE: the VM is gone (a test killed it)
                return
            slot += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


class ProtectionLoopTest(daemons.DaemonsTestCase):

    def setUp(self):
        super().setUp()
        qemu_fixture.require_qemu()  # NOTE: fails naming the package
        self.guests = []
        self.workloads = []
        # NOTE: registered before the daemons start, so it runs after they
        # are stopped: a VM killed while the agent watches is "recovered".
        self.addCleanup(self._stop_guests)

    # --- set-up helpers ---------------------------------------------------

    def start_services(self, transport_url: str | None = None,
                       options: dict | None = None, managers: int = 1,
                       agent: bool = True) -> services.Services:
        svc = super().start_services(transport_url, options, managers,
                                     agent)
        self.driver = hypervisor.get_driver(svc.conf, 'qemu')
        return svc

    def _stop_guests(self):
        self.mark('daemons stopped')
        for w in self.workloads:
            w.stopped.set()
        for w in self.workloads:
            w.join(10)
        for g in self.guests:
            g.close()

    def failure_logs(self) -> dict:
        logs = super().failure_logs()
        for g in self.guests:
            logs['qemu-log-%s' % g.name] = g.log_tail()
        return logs

    def new_guest(self, name: str = 'vm0') -> Guest:
        os.makedirs(self.path('vms'), exist_ok=True)
        g = Guest(self.driver, self.path('vms'), name)
        self.guests.append(g)
        return g.start()

    def protect(self, guest: Guest) -> str:
        inst = str(uuid.uuid4())
        self.svc.db.create_instance(inst, PROJECT, host=self.svc.host,
                                    status='protecting', driver='qemu')
        agent_rpcapi.AgentAPI(
            self.transport, signer=self.svc.signer()).protect(
            self.svc.host, inst, PROJECT, guest.agent_spec())
        return inst

    def start_workload(self, guest: Guest, period: float = 0.05) -> Workload:
        w = Workload(guest, period)
        self.workloads.append(w)
        w.start()
        return w

    # --- waiting ----------------------------------------------------------

    def points(self, inst: str) -> list:
        return self.svc.db.list_restore_points(inst)

    def wait_points(self, inst: str, count: int, timeout: float = 30,
                    after: float | None = None,
                    pred=None) -> list:
        """Wait until ``count`` restore points (recorded after ``after``,
        matching ``pred``) exist; return all of the instance's."""
        def enough():
            rows = self.points(inst)
            new = [r for r in rows
                   if (after is None or ts(r.created_at) > after)
                   and (pred is None or pred(r))]
            return rows if len(new) >= count else None
        return self.wait_for(
            enough, timeout, '%d restore points of %s%s' % (
                count, inst, ' recorded after %.3f' % after if after
                else ''))

    # --- checking ---------------------------------------------------------

    def export(self, inst: str, rp_id: str) -> str:
        os.makedirs(self.path('exports'), exist_ok=True)
        out = self.path('exports', '%s.raw' % rp_id)
        self.svc.store.export(inst, out, rp_id=rp_id)
        return out

    @staticmethod
    def problems(path: str, writes: list, *, hold_before: float | None,
                 lack_after: float | None) -> list:
        """Writes ended before ``hold_before`` missing from the image at
        ``path``; writes begun after ``lack_after`` present in it."""
        out = []
        with open(path, 'rb') as f:
            for w in writes:
                f.seek(w.offset)
                data = f.read(w.length)
                if hold_before is not None and w.ended < hold_before and (
                        not w.holds(data)):
                    out.append('write at %d (ended %.3f) missing'
                               % (w.offset, w.ended))
                if lack_after is not None and w.started > lack_after and (
                        data.count(0) != len(data)):
                    out.append('write at %d (begun %.3f) present'
                               % (w.offset, w.started))
        return out

    def check_chain(self, inst: str, writes: list, upto: int | None = None,
                    ) -> list:
        """Restore points in the database and the store agree, none lost,
        each a child of the one before; every one (up to number ``upto``)
        holds what the write log says it must: every write that ended
        before the point AHEAD numbers earlier was recorded, none begun
        after it was itself recorded. Returns the rows."""
        # NOTE: protection goes on: a merge may land in the store between
        # the two reads, its row a moment later. They must agree within a
        # few seconds; a manifest whose row never comes is a failure.
        def agreeing():
            rows = self.points(inst)
            manifests = self.svc.store.restore_points(inst)
            seen = ([(m.id, m.number, m.delta_sequence) for m in manifests],
                    [(r.id, r.number, r.delta_sequence) for r in rows])
            agreeing.last = seen
            return rows if seen[0] == seen[1] else None
        agreeing.last = None
        rows = None
        deadline = time.monotonic() + 10
        while rows is None and time.monotonic() < deadline:
            rows = agreeing()
            if rows is None:
                time.sleep(0.1)
        if rows is None:
            self.assertEqual(*agreeing.last)
        self.assertEqual(list(range(1, len(rows) + 1)),
                         [r.number for r in rows])
        self.assertEqual([None] + [r.id for r in rows[:-1]],
                         [r.parent_id for r in rows])
        seqs = [r.delta_sequence for r in rows]
        self.assertEqual(sorted(set(seqs)), seqs)
        problems = []
        for i, r in enumerate(rows):
            if upto is not None and r.number > upto:
                break
            earlier = rows[i - AHEAD] if i >= AHEAD else None
            path = self.export(inst, r.id)
            try:
                found = self.problems(
                    path, writes,
                    hold_before=ts(earlier.created_at) if earlier else None,
                    lack_after=ts(r.created_at))
            finally:
                os.unlink(path)
            problems += ['restore point #%d %s: %s' % (r.number, r.id, p)
                         for p in found[:5]]
        self.assertEqual([], problems)
        self.mark('%d restore points of %s checked' % (len(rows), inst))
        return rows

    def assert_store_clean(self):
        r = self.svc.manage('store', 'verify')
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        self.assertIn('OK', r.stdout)
        self.mark('store verify: OK')

    def assert_untouched(self, inst: str, guest: Guest):
        """No recovery was started: the VM the test started still runs."""
        self.assertEqual([], [(r.state, r.reason) for r in
                              self.svc.db.list_recoveries(inst)])
        self.assertIsNone(guest.popen.poll())
        self.assertEqual(guest.pid, self.svc.agent_state(inst)['spec']['pid'])

    def quiesce(self, inst: str, workloads: list):
        """Stop writing; wait until a restore point holds every write."""
        for w in workloads:
            w.stop()
        last = max((w.ended for g in self.guests
                    for w in g.snapshot_writes()), default=time.time())
        # NOTE: the point AHEAD after the first one recorded after the
        # last write was snapshotted after that write (check_chain).
        self.wait_points(inst, AHEAD + 1, timeout=30, after=last)

    def merging(self, ballast: list):
        """A predicate: the merge of the delta holding ``ballast`` runs.

        The ballast is random, a chunk per block: its chunks appear in the
        store while the merge runs, its restore point once it is done.
        """
        chunk_dir = os.path.join(self.svc.path('store'), 'chunks',
                                 'p-' + PROJECT)

        def stored():
            n = sum(os.path.exists(os.path.join(
                chunk_dir, w.digest[:3], w.digest)) for w in ballast)
            return n >= 2 and n
        return stored

    def unacked(self, inst: str) -> list:
        """Sequences of the deltas the agent holds without a durable ack
        (its state file), oldest first."""
        try:
            pending = self.svc.agent_state(inst)['pending']
        except (OSError, ValueError):
            return []
        return sorted(p['sequence'] for p in pending
                      if p.get('restore_point') is None)

    def spooled(self, inst: str) -> dict:
        """Sequence -> number of part files in the manager's spool (with
        ``[manager] spool_memory_mb = 0``: parts are otherwise held in
        memory)."""
        root = os.path.join(self.svc.spool_dir, inst)
        out = {}
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return out
        for name in names:
            try:
                out[int(name)] = len([p for p in os.listdir(
                    os.path.join(root, name)) if p.endswith('.part')])
            except (FileNotFoundError, ValueError):
                continue
        return out

    # --- the tests ----------------------------------------------------------

    def test_happy_path(self):
        """Two VMs: restore points land; each holds what it must."""
        self.start_services()
        guests = [self.new_guest('vm%d' % i) for i in range(2)]
        insts = [self.protect(g) for g in guests]
        for inst in insts:
            self.wait_points(inst, 1)
            self.assertEqual('protected',
                             self.svc.db.get_instance(inst).status)
        started = time.time()
        workloads = [self.start_workload(g) for g in guests]
        for inst in insts:
            self.wait_points(inst, 4, after=started)
        for inst, g in zip(insts, guests):
            self.quiesce(inst, workloads)
            rows = self.check_chain(inst, g.snapshot_writes())
            self.assertGreaterEqual(len(rows), 6)
            self.assertEqual('protected',
                             self.svc.db.get_instance(inst).status)
            # NOTE: protection goes on: read both until no point lands
            # in between.
            self.wait_for(
                lambda: self.svc.db.get_instance(
                    inst).newest_restore_point_id == self.points(inst)[-1].id,
                10, 'the newest restore point of %s on its row' % inst)
            # The newest point holds every write.
            path = self.export(inst, rows[-1].id)
            self.assertEqual([], self.problems(
                path, g.snapshot_writes(), hold_before=float('inf'),
                lack_after=None))
        self.assertGreater(sum(len(g.writes) for g in guests), 50)
        for inst, g in zip(insts, guests):
            self.assert_untouched(inst, g)
        self.assert_store_clean()

    def merges(self) -> dict:
        """(instance, delta sequence) -> the manager replicas whose log
        says they merged it (the store's line for a new restore point; a
        commit of a delta merged before finds it, "already merged")."""
        pattern = re.compile(r'Instance ([0-9a-f-]{36}): restore point '
                             r'\S+ \(#\d+\) from delta (\d+):')
        found = {}
        for daemon in self.svc.managers:
            with open(daemon.log_path) as f:
                for m in pattern.finditer(f.read()):
                    found.setdefault((m.group(1), int(m.group(2))),
                                     []).append(daemon.name)
        return found

    def assert_merged_once(self, insts) -> dict:
        """Every delta of ``insts`` merged by one replica, once; returns
        instance -> the replicas that merged its deltas."""
        merges = self.merges()
        self.assertEqual({}, {k: v for k, v in merges.items()
                              if len(v) > 1})
        by = {}
        for (inst, _seq), names in merges.items():
            by.setdefault(inst, set()).update(names)
        self.assertEqual(set(insts), set(by))
        return by

    def assert_counted_as_logged(self, daemon):
        """The replica's deltas_merged counter, written with its beats,
        catches up with the merges its log showed before, and never runs
        ahead of its log."""
        def logged():
            return sum(names.count(daemon.name)
                       for names in self.merges().values())
        before = logged()
        got = self.wait_for(
            lambda: (lambda s: s if s.counters['deltas_merged'] >= before
                     else None)(self.standing(daemon)),
            30, '%s to count its %d merges' % (daemon.name, before))
        self.assertLessEqual(got.counters['deltas_merged'], logged())
        return got

    def protect_writing(self, count: int, points: int):
        """``count`` guests protected and written to, each with ``points``
        restore points made since: (guests, instances, workloads)."""
        guests = [self.new_guest('vm%d' % i) for i in range(count)]
        insts = [self.protect(g) for g in guests]
        started = time.time()
        workloads = [self.start_workload(g) for g in guests]
        for inst in insts:
            self.wait_points(inst, points, after=started, timeout=90)
        return guests, insts, workloads

    def test_two_managers_share_the_deltas_and_survive_one(self):
        """Two manager replicas on one PostgreSQL database (issue 12): the
        parts and commit of each delta meet at the instance's owner, each
        delta is merged once; SIGKILL one, the other takes its instances
        over and no restore point is lost or out of order."""
        pg = self.useFixture(db_fixtures.PostgreSQLServer())
        svc = self.start_replicas(pg.url, 2)
        guests, insts, workloads = self.protect_writing(3, 4)
        by = self.assert_merged_once(insts)
        # NOTE: one owner per instance while both replicas live.
        self.assertEqual({inst: 1 for inst in insts},
                         {inst: len(names) for inst, names in by.items()})
        counts = {d.name: sum(1 for names in by.values() if d.name in names)
                  for d in svc.managers}
        victim = max(svc.managers, key=lambda d: counts[d.name])
        survivor = [d for d in svc.managers if d is not victim][0]
        # NOTE: each replica's own counters (GET /metrics per replica)
        # follow what its log says it merged; the ring gives each its
        # share of the servers.
        for daemon in svc.managers:
            self.assert_counted_as_logged(daemon)
        self.assertEqual(len(insts), sum(self.standing(d).servers
                                         for d in svc.managers))
        orphans = [inst for inst, names in by.items()
                   if victim.name in names]
        killed = self.mark('SIGKILL %s (owner of %d instances)'
                           % (victim.name, len(orphans)))
        victim.kill()
        for inst in insts:
            self.wait_points(inst, 3, after=killed, timeout=120)
        taken = {(i, s) for (i, s), names in self.merges().items()
                 if survivor.name in names}
        self.assertEqual(set(orphans), {i for i, _s in taken
                                        if i in orphans})
        for inst, g in zip(insts, guests):
            self.quiesce(inst, workloads)
            self.check_chain(inst, g.snapshot_writes())
        self.assert_merged_once(insts)
        # The dead replica: down, no servers, its totals frozen at its
        # last beat; the survivor owns every server and counted the
        # orphans' deltas too.
        dead = self.wait_for(
            lambda: (lambda s: s if not s.replica.alive else None)(
                self.standing(victim)), 30, 'the victim shown dead')
        self.assertEqual(0, dead.servers)
        self.assertLessEqual(dead.counters['deltas_merged'], sum(
            names.count(victim.name) for names in self.merges().values()))
        alive = self.assert_counted_as_logged(survivor)
        self.assertEqual((True, len(insts)),
                         (alive.replica.alive, alive.servers))
        # NOTE: the guests wrote: what the replicas counted shipping is
        # at most what the servers' own counters say was merged.
        shipped = (dead.counters['shipped_bytes']
                   + alive.counters['shipped_bytes'])
        self.assertGreater(shipped, 0)
        self.assertLessEqual(shipped, sum(
            svc.db.get_instance(i).shipped_bytes for i in insts))

    def test_three_managers_on_mariadb_survive_kill_restart_and_broker(self):
        """Three manager replicas on MariaDB (issue 12, no GET_LOCK): the
        owner of an instance is SIGKILLed while it merges a large delta,
        another takes its instances over and merges that delta (sent
        again), the killed one rejoins, the broker restarts once. Nothing
        lost, nothing merged twice, every point holds what it must."""
        mdb = self.useFixture(mariadb.MariaDBServer())
        broker = self.useFixture(rabbitmq.RabbitMQServer())
        svc = self.start_replicas(
            mdb.url, 3, transport_url=broker.transport_url,
            options={'image': {'max_part_bytes': MiB}})
        guests, insts, workloads = self.protect_writing(2, 3)
        by = self.assert_merged_once(insts)
        [owner_name] = by[insts[0]]
        victim = [d for d in svc.managers if d.name == owner_name][0]

        # SIGKILL the owner of the first instance while it merges.
        killed_seq = None
        for _attempt in range(5):
            ballast = guests[0].fill(32 * MiB)
            count_before = len(self.points(insts[0]))
            self.wait_for(self.merging(ballast), 30, 'chunks of a 32 MiB '
                          'delta in the store', interval=0.005)
            victim.kill()
            killed = self.mark('SIGKILL %s while merging' % victim.name)
            unacked = self.unacked(insts[0])
            if unacked and len(self.points(insts[0])) == count_before:
                killed_seq = unacked[0]
                break
            victim.start()  # NOTE: too late, it was durable: again.
            self.wait_points(insts[0], 1, after=time.time(), timeout=60)
        self.assertIsNotNone(killed_seq, '%s was never killed while '
                             'merging' % victim.name)
        # Another replica merges that delta, and goes on for both.
        self.wait_points(insts[0], 1, timeout=120,
                         pred=lambda r: r.delta_sequence == killed_seq)
        for inst in insts:
            self.wait_points(inst, 2, after=killed, timeout=120)
        # NOTE: merged once. By another replica, unless the victim's merge
        # had written its manifest just before the kill (not yet recorded
        # nor acknowledged): the next replica then finds it merged
        # ("already merged") and records it.
        merged_by = self.merges()[(insts[0], killed_seq)]
        self.assertEqual(1, len(merged_by), merged_by)

        # The killed replica rejoins; the broker restarts once.
        victim.start()
        back = self.mark('%s started again' % victim.name)
        for inst in insts:
            self.wait_points(inst, 2, after=back, timeout=120)
        broker.stop()
        self.mark('broker stopped')
        broker.start()
        back = self.mark('broker started again')
        for inst in insts:
            self.wait_points(inst, 2, after=back, timeout=120)

        for inst, g in zip(insts, guests):
            self.quiesce(inst, workloads)
            self.check_chain(inst, g.snapshot_writes())
        self.assert_merged_once(insts)
        # The database and the store agree: rebuilding the one from the
        # other (ha-snapshot-manage db rebuild) finds nothing to change.
        svc.agent.stop()
        for daemon in svc.managers:
            daemon.stop()
        out = subprocess.run(
            [sys.executable, '-m', 'ha_snapshot.cmd.manage',
             '--config-file', svc.conf_file, 'db', 'rebuild'],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(0, out.returncode, out.stderr)
        self.assertEqual({'instances_created': 0, 'restore_points_recorded': 0,
                          'restore_points_removed': 0, 'failed': []},
                         json.loads(out.stdout.strip().splitlines()[-1]))

    def test_agent_killed_while_shipping(self):
        """SIGKILL the agent mid-delta; a new agent sends it again."""
        # NOTE: parts on disk, to see how far the delta has travelled.
        svc = self.start_services(options={
            'image': {'max_part_bytes': MiB},
            'manager': {'spool_memory_mb': 0}})
        g = self.new_guest()
        inst = self.protect(g)
        self.wait_points(inst, 1)
        workload = self.start_workload(g)
        killed = None
        for _attempt in range(5):
            g.fill(32 * MiB)

            def shipping():
                busy = [s for s, n in self.spooled(inst).items() if n >= 4]
                if not busy:
                    return None  # NOTE: no database query every 5 ms
                recorded = {r.delta_sequence for r in self.points(inst)}
                busy = [s for s in busy if s not in recorded]
                return busy and max(busy)
            seq = self.wait_for(shipping, 20, 'parts of a 32 MiB delta in '
                                'the spool of %s' % inst, interval=0.005)
            svc.agent.kill()
            kill_time = self.mark('agent SIGKILLed while delta %d ships '
                                  '(%d parts spooled)'
                                  % (seq, self.spooled(inst).get(seq, 0)))
            if seq not in {r.delta_sequence for r in self.points(inst)}:
                killed = seq
                break
            svc.agent.start()  # NOTE: too late, it was durable: again.
        self.assertIsNotNone(killed, 'the agent was never killed while '
                             'shipping')
        state = svc.agent_state(inst)
        pending = [p for p in state['pending'] if p['sequence'] == killed]
        self.assertEqual(1, len(pending), state)
        self.assertIsNone(pending[0]['restore_point'])
        self.assertIsNotNone(pending[0]['parent'])
        # NOTE: snapshots the old agent took while that delta shipped.
        taken = max(p['sequence'] for p in state['pending'])

        offset = svc.agent.start()
        self.mark('agent started again')
        rows = self.wait_points(
            inst, 1, pred=lambda r: r.delta_sequence == killed)
        resent = [r for r in rows if r.delta_sequence == killed][0]
        self.assertEqual(pending[0]['parent'], resent.parent_id)
        self.wait_log(svc.agent, 'delta %d durable' % killed, offset, 10)
        self.assertNotIn(killed, self.spooled(inst))
        # The first snapshot the new agent takes holds every write that
        # ended before the kill. NOTE: an overlay the old agent froze just
        # before the kill, before its state file said so, is adopted and
        # sent first (no taken_at): it holds writes up to that snapshot
        # only, so it is not the one checked here.
        def new_agents(r):
            return (r.delta_sequence > taken and r.taken_at is not None
                    and ts(r.taken_at) > kill_time)
        rows = self.wait_points(inst, 1, pred=new_agents)
        nxt = min((r for r in rows if new_agents(r)),
                  key=lambda r: r.delta_sequence)
        path = self.export(inst, nxt.id)
        self.assertEqual([], self.problems(
            path, [w for w in g.snapshot_writes() if w.ended < kill_time],
            hold_before=kill_time, lack_after=None))
        os.unlink(path)
        self.quiesce(inst, [workload])
        self.check_chain(inst, g.snapshot_writes())
        self.assert_untouched(inst, g)
        self.assert_store_clean()

    def test_manager_killed_while_merging(self):
        """SIGKILL the manager mid-merge; the agent retries the commit and
        sends again the parts the manager held in memory."""
        svc = self.start_services(options={'image': {'max_part_bytes': MiB}})
        g = self.new_guest()
        inst = self.protect(g)
        self.wait_points(inst, 1)
        workload = self.start_workload(g)
        killed = None
        for _attempt in range(5):
            ballast = g.fill(32 * MiB)
            count_before = len(self.points(inst))

            self.wait_for(self.merging(ballast), 20, 'chunks of a 32 MiB '
                          'delta in the store', interval=0.005)
            svc.manager.kill()
            self.mark('manager SIGKILLed while merging')
            # NOTE: commits are in order: the oldest delta without an ack
            # is the one whose commit (or parts) the kill interrupted.
            unacked = self.unacked(inst)
            rows = self.points(inst)
            if unacked and len(rows) == count_before:
                killed = unacked[0]
                break
            svc.manager.start()  # NOTE: too late, it was durable: again.
        self.assertIsNotNone(killed, 'the manager was never killed while '
                             'merging')
        agent_offset = services.file_size(svc.agent.log_path)
        svc.manager.start()
        self.mark('manager started again')
        self.wait_points(inst, 1, timeout=45,
                         pred=lambda r: r.delta_sequence == killed)
        # NOTE: the parts that had arrived (their chunks were being
        # stored) were held in the killed manager's memory: the commit
        # asked of the new one reports them lost and the agent sends the
        # delta again. A kill that also hit a call of that delta (a part,
        # or the commit) shows as that call failing; a kill that came
        # after the merge wrote the restore point (before the database
        # row) would only show the call failing.
        self.assertRegex(svc.agent.log(agent_offset), (
            r'(commit|part \d+) of delta %d failed|Delta %d of instance %s '
            r'rejected: part \d+ of \d+ was never received \(or was lost '
            r'with a restart of the manager\)') % (killed, killed, inst))
        self.wait_points(inst, 2, pred=lambda r: r.delta_sequence > killed)
        self.quiesce(inst, [workload])
        self.check_chain(inst, g.snapshot_writes())
        self.assert_untouched(inst, g)
        self.assert_store_clean()

    def test_snapshots_go_on_while_deltas_wait(self):
        """The manager stops answering (SIGSTOP): the agent goes on
        snapshotting while deltas wait, up to ``[agent]
        max_pending_deltas`` of them and no more; once the manager answers
        again they all land, in order."""
        limit = AHEAD - 1
        svc = self.start_services(options={
            'agent': {'max_pending_deltas': limit}})
        g = self.new_guest()
        inst = self.protect(g)
        self.wait_points(inst, 1)
        workload = self.start_workload(g)
        self.wait_points(inst, 2)
        offset = services.file_size(svc.agent.log_path)
        svc.manager.signal(signal.SIGSTOP)
        # NOTE: a stopped manager cannot be stopped by the clean-up.
        self.addCleanup(svc.manager.signal, signal.SIGCONT)
        self.mark('manager stopped (SIGSTOP)')

        def waiting():
            return [p['sequence'] for p in svc.agent_state(inst)['pending']
                    if p['restore_point'] is None]
        seqs = self.wait_for(lambda: len(waiting()) >= limit and waiting(),
                             30, '%d deltas waiting for their ack' % limit)
        # The policy asks for a snapshot every second: none comes while
        # that many deltas wait.
        self.assertFalse(self.poll(lambda: len(waiting()) > limit, 3))
        self.assertEqual(list(range(seqs[0], seqs[0] + limit)), waiting())
        self.wait_log(svc.agent, 'deltas wait for the manager', offset, 10)
        svc.manager.signal(signal.SIGCONT)
        resumed = self.mark('manager continued (SIGCONT)')
        rows = self.wait_points(inst, limit + 1, timeout=60, after=resumed)
        self.assertTrue(set(seqs) <= {r.delta_sequence for r in rows})
        self.quiesce(inst, [workload])
        self.check_chain(inst, g.snapshot_writes())
        self.assert_untouched(inst, g)
        self.assert_store_clean()

    def test_rabbitmq_restarted(self):
        """The broker goes away mid-cycle and comes back: protection
        resumes by itself."""
        broker = self.useFixture(rabbitmq.RabbitMQServer())
        svc = self.start_services(transport_url=broker.transport_url)
        g = self.new_guest()
        inst = self.protect(g)
        self.wait_points(inst, 1)
        started = time.time()
        workload = self.start_workload(g)
        self.wait_points(inst, 2, after=started)
        offset = services.file_size(svc.agent.log_path)
        broker.stop()
        self.mark('broker stopped')
        self.wait_log(svc.agent, 'retrying', offset, 30)
        broker.start()
        back = self.mark('broker started again')
        self.wait_points(inst, 3, timeout=60, after=back)
        self.quiesce(inst, [workload])
        self.check_chain(inst, g.snapshot_writes())
        self.assertEqual('protected', svc.db.get_instance(inst).status)
        self.assert_untouched(inst, g)
        self.assert_store_clean()

    def test_store_full(self):
        """ENOSPC in the store: nothing acknowledged, the overlay kept;
        space back: protection resumes by itself."""
        mnt = self.path('small')
        os.makedirs(mnt)
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=40m',
                            'tmpfs', mnt], capture_output=True, text=True)
        if r.returncode:
            self.skipTest('cannot mount a tmpfs here: %s' % r.stderr.strip())
        self.addCleanup(subprocess.run, ['umount', mnt], check=True)
        svc = self.start_services(options={'storage': {
            'backend_url': 'file://' + os.path.join(mnt, 'store')}})
        g = self.new_guest()
        inst = self.protect(g)
        self.wait_points(inst, 1)
        started = time.time()
        workload = self.start_workload(g)
        self.wait_points(inst, 2, after=started)

        offset = services.file_size(svc.manager.log_path)
        self.mark('filling the store\'s disk')
        filler = os.path.join(mnt, 'filler')
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for size in (MiB, 4 * KiB):
                try:
                    while True:
                        os.write(fd, b'\xff' * size)
                except OSError as e:
                    self.assertEqual(errno.ENOSPC, e.errno)
        finally:
            os.close(fd)
        def refusals(n):
            return lambda: len([
                line for line in svc.manager.log(offset).splitlines()
                if 'Refused delta' in line and 'the store is full' in line
            ]) >= n
        self.wait_for(refusals(1), 30, 'a delta refused: the store is full')
        count = len(self.points(inst))
        # NOTE: the agent retries (0.2, 0.4, 0.8 s...): still refused.
        self.wait_for(refusals(4), 30, '3 more refusals')
        self.assertEqual(count, len(self.points(inst)))
        pending = svc.agent_state(inst)['pending']
        self.assertTrue(pending)
        self.assertIsNone(pending[0]['restore_point'])
        self.assertTrue(os.path.exists(pending[0]['frozen']))

        # Refused writes leave nothing behind on the full disk.
        self.assertEqual([], [
            os.path.join(d, n) for d, _dirs, names in os.walk(mnt)
            for n in names if n.startswith('.tmp-')])
        os.unlink(filler)
        freed = self.mark('filler removed')
        self.wait_points(inst, 2, after=freed)
        self.quiesce(inst, [workload])
        self.check_chain(inst, g.snapshot_writes())
        self.assert_untouched(inst, g)
        self.assert_store_clean()

    def kill_and_recover(self, g: Guest, inst: str, in_flight=None):
        """SIGKILL the VM; check that it is recovered, once, on the restore
        point the recovery names, and that protection goes on from there.

        ``in_flight``: the sequence of a delta the old agent was shipping
        when the VM died (it may or may not have become durable)."""
        svc = self.svc
        old_pid = g.pid
        # NOTE: the agent sees QEMU die, and the manager records the
        # recovery, before kill() has reaped it: the recovery must be
        # newer than the instant before the kill.
        before_kill = time.time()
        g.kill()
        self.mark('VM SIGKILLed')
        recs = self.wait_for(
            lambda: [r for r in svc.db.list_recoveries(inst)
                     if r.state in ('succeeded', 'failed')],
            45, 'the recovery of %s to end' % inst)
        rec = recs[-1]
        self.assertEqual('succeeded', rec.state, rec.error)
        self.assertGreater(ts(rec.created_at), before_kill)
        self.wait_for(lambda: svc.db.get_instance(inst).status ==
                      'protected', 10, '%s to be protected again' % inst)
        recovered = self.mark('recovered to %s' % rec.restore_point_id)
        row = svc.db.get_instance(inst)
        # NOTE: whichever the agent saw first: the exit or the monitor.
        self.assertIn(row.last_report_reason, (
            'QEMU process exited', 'QMP monitor closed',
            'monitor check failed 2 times in a row'))
        self.assertEqual(row.last_report_reason, rec.reason)

        spec = svc.agent_state(inst)['spec']
        self.assertNotEqual(old_pid, spec['pid'])
        with open('/proc/%d/cmdline' % spec['pid'], 'rb') as f:
            self.assertIn(g.qmp_path.encode(), f.read())
        self.assertIn(rec.restore_point_id, spec['disk_path'])
        # The restarted VM's disk is the restore point recovered to.
        path = self.export(inst, rec.restore_point_id)
        r = subprocess.run(['qemu-img', 'compare', '-U', '-f', 'raw', '-F',
                            'qcow2', path, spec['disk_path']],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)

        # Protection goes on from it: new points, all with its content (no
        # one writes into the new VM), and no second recovery.
        rows = self.wait_points(inst, 3, after=recovered)
        newest = self.export(inst, rows[-1].id)
        self.assertTrue(base.same_image(path, newest))
        self.assertEqual([rec.id], [r.id for r in
                                    svc.db.list_recoveries(inst)])
        self.assertEqual(spec['pid'], svc.agent_state(inst)['spec']['pid'])
        rp = [r for r in rows if r.id == rec.restore_point_id][0]
        old = [r.number for r in rows if in_flight is not None
               and r.delta_sequence <= in_flight]
        if old and max(old) > rp.number:
            self.mark('the old agent made #%d durable after the recovery '
                      'chose #%d' % (max(old), rp.number))
        self.check_chain(inst, g.snapshot_writes(),
                         upto=max(old + [rp.number]))
        self.assert_store_clean()
        return rec

    def test_vm_killed_is_recovered(self):
        """SIGKILL the VM: the agent reports it, the manager has it
        restarted on the newest restore point, protection goes on."""
        self.start_services()
        g = self.new_guest()
        inst = self.protect(g)
        self.wait_points(inst, 1)
        started = time.time()
        self.start_workload(g)
        self.wait_points(inst, 3, after=started)
        self.kill_and_recover(g, inst)

    def assert_live_restart(self, inst: str, rec) -> None:
        """The agent restarted ``inst`` by a live restore (issue 16): the
        VM ran before the stream completed, and its disk stands alone."""
        said = re.search(r'Instance %s restarted from restore point %s '
                         r'\(pid (\d+); running after ([0-9.]+) s, '
                         r'restored after ([0-9.]+) s, live\)'
                         % (inst, rec.restore_point_id), self.svc.agent.log())
        self.assertIsNotNone(said, 'the agent logs a live restart')
        self.assertLessEqual(float(said.group(2)), float(said.group(3)))
        spec = self.svc.agent_state(inst)['spec']
        self.assertEqual(int(said.group(1)), spec['pid'])
        self.assertIn('live-%s' % rec.restore_point_id, spec['disk_path'])
        info = json.loads(subprocess.run(
            ['qemu-img', 'info', '-U', '--output=json', spec['disk_path']],
            capture_output=True, text=True, check=True).stdout)
        self.assertNotIn('backing-filename', info)

    def test_manager_killed_during_a_recovery_another_finishes_it(self):
        """Two manager replicas (issue 12): the VM dies, and the replica
        running its recovery is SIGKILLed while the recovery runs. The
        other one takes it over at its recorded step (its lease expired)
        and finishes it; the VM is restarted once, by that one recovery,
        and protection goes on from the point it names."""
        pg = self.useFixture(db_fixtures.PostgreSQLServer())
        svc = self.start_replicas(pg.url, 2, lease_duration=4)
        [g], [inst], _workloads = self.protect_writing(1, 3)
        offsets = {d.name: services.file_size(d.log_path)
                   for d in svc.managers}
        g.kill()
        self.mark('VM SIGKILLed')
        rec = self.wait_for(
            lambda: next((r for r in svc.db.list_recoveries(inst)
                          if r.state == 'running'), None),
            45, 'a recovery of %s to run' % inst, interval=0.005)
        runner = self.wait_for(
            lambda: next((d for d in svc.managers
                          if rec.id in d.log(offsets[d.name])), None),
            10, 'the replica running recovery %s to log it' % rec.id,
            interval=0.005)
        runner.kill()
        killed = self.mark('SIGKILL %s while recovery %s runs (step %s)'
                           % (runner.name, rec.id, rec.step))
        other = [d for d in svc.managers if d is not runner][0]
        done = self.wait_for(
            lambda: next((r for r in svc.db.list_recoveries(inst)
                          if r.id == rec.id and r.state in (
                              'succeeded', 'failed')), None),
            90, 'recovery %s to end after its runner died' % rec.id)
        self.assertEqual('succeeded', done.state, done.error)
        self.mark('recovery %s succeeded' % rec.id)
        # The other replica finished it (its log line follows the row);
        # it was the only recovery.
        self.wait_log(other, 'recovery %s succeeded' % rec.id,
                      offsets[other.name], 10)
        self.assertEqual([rec.id],
                         [r.id for r in svc.db.list_recoveries(inst)])
        # One restart: whether the killed replica had asked for it or not,
        # the agent started one VM for this recovery.
        spec = svc.agent_state(inst)['spec']
        self.assertIn(rec.restore_point_id, spec['disk_path'])
        self.assertEqual(1, len([p for p in psutil.process_iter(['cmdline'])
                                 if g.qmp_path in ' '.join(
                                     p.info['cmdline'] or ())]))
        self.assertEqual(1, svc.agent.log().count(
            'Instance %s restarted from restore point' % inst))
        self.wait_for(lambda: svc.db.get_instance(inst).status ==
                      'protected', 30, '%s to be protected again' % inst)
        rows = self.wait_points(inst, 2, after=killed, timeout=90)
        self.assertTrue(base.same_image(
            self.export(inst, rec.restore_point_id),
            self.export(inst, rows[-1].id)))

    def test_vm_killed_while_shipping(self):
        """SIGKILL the VM while a large delta is being merged: the point
        the old agent makes durable after the manager chose the point to
        recover to does not derail the restarted VM's protection (nor
        restart it a second time).

        The restart is a live restore (``[agent] live_restore``, issue 16:
        the VM runs on the restore point served over NBD while 32 MiB
        more are streamed in); test_vm_killed_is_recovered has the full
        restore of the default."""
        self.start_services(options={'image': {'max_part_bytes': MiB},
                                     'agent': {'live_restore': True}})
        g = self.new_guest()
        inst = self.protect(g)
        self.wait_points(inst, 1)
        started = time.time()
        self.start_workload(g)
        self.wait_points(inst, 2, after=started)
        ballast = g.fill(32 * MiB)
        self.wait_for(self.merging(ballast), 20, 'chunks of a 32 MiB delta '
                      'in the store', interval=0.005)
        unacked = self.unacked(inst)
        in_flight = unacked[-1] if unacked else None
        rec = self.kill_and_recover(g, inst, in_flight=in_flight)
        self.assert_live_restart(inst, rec)

    def test_rogue_client_rejected(self):
        """Bad calls straight to the manager: each refused, by name."""
        svc = self.start_services()
        g = self.new_guest()
        inst = self.protect(g)
        self.wait_points(inst, 1)
        workload = self.start_workload(g)
        self.wait_points(inst, 3)
        workload.stop()
        svc.agent.stop()
        rows = self.points(inst)
        newest = rows[-1]
        before = base.tree_digest(svc.path('store'))
        # NOTE: a client holding the agent's own key: what it may do.
        api = manager_rpcapi.ManagerAPI(
            self.transport, timeout=30,
            signer=svc.signer(rpc_auth.host_identity(svc.host)))

        def part(instance, sequence, raw, sha=None, payload=None):
            if payload is None:
                payload = base64.b64encode(
                    zstandard.ZstdCompressor().compress(raw)).decode()
            return {'instance': instance, 'sequence': sequence, 'index': 0,
                    'extents': [[0, len(raw), delta_mod.DATA]],
                    'raw_size': len(raw), 'compression': 'zstd',
                    'sha256': sha or hashlib.sha256(raw).hexdigest(),
                    'payload': payload}

        def header(instance, sequence, parent, raw):
            return {'instance': instance, 'project': PROJECT,
                    'sequence': sequence, 'parent': parent,
                    'virtual_size': newest.virtual_size,
                    'cluster_size': 64 * KiB, 'part_count': 1,
                    'changed_bytes': len(raw), 'data_bytes': len(raw),
                    'created_at': time.time(), 'format_version': 1}

        raw = os.urandom(64 * KiB)
        log_offset = services.file_size(svc.manager.log_path)
        refused = []

        def refuse(exc_class, reason, func, *args):
            e = self.assertRaises(exc_class, func, *args)
            # NOTE: the manager's own exception, across the bus.
            self.assertEqual(exc_class.__name__ + '_Remote',
                             type(e).__name__)
            self.assertIn(reason, str(e))
            refused.append((type(e).__name__, reason))

        # An instance the manager does not protect.
        stranger = str(uuid.uuid4())
        refuse(exception.InstanceNotFound, 'not recorded in the database',
               api.put_part, stranger, 0, part(stranger, 0, raw))
        refuse(exception.InstanceNotFound, 'not recorded in the database',
               api.commit_delta, header(stranger, 0, None, raw))
        # An old delta replayed on a parent that is not the newest.
        old = rows[1]
        api.put_part(inst, old.delta_sequence,
                     part(inst, old.delta_sequence, raw))
        refuse(exception.DeltaParentMismatch,
               'the newest restore point is %s' % newest.id,
               api.commit_delta,
               header(inst, old.delta_sequence, rows[0].id, raw))
        # A part whose data does not match its checksum: refused on
        # arrival, and a commit without it finds it missing.
        seq = newest.delta_sequence + 100
        refuse(exception.InvalidDelta, 'checksum mismatch',
               api.put_part, inst, seq,
               part(inst, seq, raw, sha=hashlib.sha256(b'x').hexdigest()))
        refuse(exception.PartsMissing, 'part 0 of 1 was never received',
               api.commit_delta, header(inst, seq, newest.id, raw))
        # A payload larger than any part may be.
        limit = svc.conf.image.max_part_bytes
        refuse(exception.InvalidDelta, 'larger than the part limit',
               api.put_part, inst, seq + 1,
               part(inst, seq + 1, raw, payload='A' * (limit * 2)))

        log = svc.manager.log(log_offset)
        for _name, reason in refused:
            self.assertIn(reason, log)
        self.assertEqual(before, base.tree_digest(svc.path('store')))
        self.assertEqual([r.id for r in rows],
                         [r.id for r in self.points(inst)])
        # The instance is still protected: a new agent goes on.
        restarted = time.time()
        svc.agent.start()
        self.wait_points(inst, 2, after=restarted)
        self.check_chain(inst, g.snapshot_writes())
        self.assert_untouched(inst, g)
        self.assert_store_clean()
