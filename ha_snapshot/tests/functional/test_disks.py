"""Every writable disk of a server in one cut (issue 14, item 1), on real
parts: the qemu driver, a private RabbitMQ, ``ha-snapshot-manager`` and
``ha-snapshot-agent`` processes (fixtures/services.py), a file store.

The VM (q35, paused: no guest code) has two writable virtio-blk disks,
root ``vd0`` and ephemeral ``vd1``, and a read-only one (a config drive)
that is never protected. The test writes distinct patterns into both
writable disks through their guest devices (``qemu-io -d`` on a second
QMP monitor, as test_protection_loop.py does), waits for a restore point
taken after the writes, SIGKILLs the VM and lets the manager have the
agent restart it: the restarted VM's two disks are the restore point's,
byte for byte (``qemu-img compare``), and protection goes on from them.
"""

import json
import os
import subprocess
import time
import uuid

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot import disk_layout
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.tests.fixtures import qemu as qemu_fixture
from ha_snapshot.tests.fixtures import services
from ha_snapshot.tests.functional import daemons
from ha_snapshot.tests.functional import test_protection_loop as loop

MiB = 1 << 20
ROOT_SIZE = 64 * MiB
# NOTE: not a multiple of the store's chunk: the disk's last chunk reaches
# into the zeros before the next 1 GiB boundary of the concatenated space.
DATA_SIZE = 48 * MiB + 64 * 1024
PROJECT = loop.PROJECT
# Pattern writes: (device, offset, length, pattern).
WRITES = (('vd0', 0, MiB, 0xa1), ('vd0', 40 * MiB, 3 * MiB, 0xa2),
          ('vd1', 0, 2 * MiB, 0xb1), ('vd1', 17 * MiB, MiB, 0xb2),
          ('vd1', DATA_SIZE - 64 * 1024, 64 * 1024, 0xb3))


def split_point(store, inst: str, rp_id: str, outdir: str) -> dict:
    """Restore point ``rp_id`` exported, cut in its disks: target -> a raw
    file in ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    whole = os.path.join(outdir, '%s.raw' % rp_id)
    rp = store.export(inst, whole, rp_id=rp_id)
    out = {}
    with open(whole, 'rb') as f:
        for d in rp.disks:
            path = os.path.join(outdir, '%s-%s.raw' % (rp_id, d['target']))
            f.seek(d['offset'])
            with open(path, 'wb') as g:
                g.write(f.read(d['size']))
            out[d['target']] = path
    os.unlink(whole)
    return out


def holds(path: str, offset: int, length: int, pattern: int) -> bool:
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(length) == bytes([pattern]) * length


def differs(raw: str, image: str, fmt: str = 'qcow2') -> str:
    """'' when the guest view of ``image`` (through its backing chain) is
    the raw file ``raw`` byte for byte, else qemu-img's words."""
    r = subprocess.run(['qemu-img', 'compare', '-U', '-f', 'raw', '-F', fmt,
                        raw, image], capture_output=True, text=True,
                       timeout=120)
    return '' if r.returncode == 0 else (r.stdout + r.stderr or
                                         'exit code %d' % r.returncode)


class TwoDiskGuest(loop.Guest):
    """A q35 VM with a root and an ephemeral disk and a read-only config
    drive, started by the qemu driver, then left to the agent."""

    def __init__(self, driver, workdir: str, name: str = 'vm2'):
        super().__init__(driver, workdir, name)
        self.files = {dev: os.path.join(workdir, '%s-%s.qcow2' % (name, dev))
                      for dev in ('vd0', 'vd1')}
        self.disk_path = self.files['vd0']
        self.config_drive = os.path.join(workdir, '%s-config.raw' % name)
        self.ended = 0.0

    def make_disks(self) -> tuple:
        for dev, size in (('vd0', ROOT_SIZE), ('vd1', DATA_SIZE)):
            subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                            self.files[dev], str(size)], check=True,
                           timeout=60)
        with open(self.config_drive, 'wb') as f:
            f.write(b'config drive\n'.ljust(MiB, b'\0'))
        return (hv_base.DiskSpec(path=self.files['vd0'], node='disk0',
                                 device='vd0'),
                hv_base.DiskSpec(path=self.files['vd1'], node='disk1',
                                 device='vd1'))

    def extra_args(self) -> tuple:
        return ('-blockdev', json.dumps({
                    'driver': 'raw', 'node-name': 'cfg', 'read-only': True,
                    'file': {'driver': 'file', 'read-only': True,
                             'filename': self.config_drive}}),
                '-device', 'virtio-blk-pci,drive=cfg,id=cfg0')

    def agent_spec(self) -> dict:
        return dict(super().agent_spec(), disk='vd0',
                    disk_roles={'vd1': 'ephemeral'})

    def write(self, device: str, offset: int, length: int,
              pattern: int) -> None:
        self.qemu_io('write -P 0x%02x %d %d' % (pattern, offset, length),
                     device)
        self.ended = time.time()


class TwoDisksTest(daemons.DaemonsTestCase):

    def setUp(self):
        super().setUp()
        qemu_fixture.require_qemu()
        self.guest = None
        self.addCleanup(self._stop_guest)

    def _stop_guest(self):
        if self.guest is not None:
            self.guest.close()

    def failure_logs(self) -> dict:
        logs = super().failure_logs()
        if self.guest is not None:
            logs['qemu-log'] = services.tail(self.guest.log_path, 60)
        return logs

    def protect(self, guest) -> str:
        inst = str(uuid.uuid4())
        self.svc.db.create_instance(inst, PROJECT, host=self.svc.host,
                                    status='protecting', driver='qemu')
        agent_rpcapi.AgentAPI(
            self.transport, signer=self.svc.signer()).protect(
            self.svc.host, inst, PROJECT, guest.agent_spec())
        return inst

    def wait_points(self, inst: str, count: int, after: float | None = None,
                    timeout: float = 45) -> list:
        def enough():
            rows = self.svc.db.list_restore_points(inst)
            new = [r for r in rows
                   if after is None or loop.ts(r.created_at) > after]
            return rows if len(new) >= count else None
        return self.wait_for(enough, timeout, '%d restore points of %s%s'
                             % (count, inst, ' after %.3f' % after
                                if after else ''))

    def split(self, inst: str, rp_id: str) -> dict:
        """The restore point exported, cut in its disks (raw files)."""
        return split_point(self.svc.store, inst, rp_id, self.path('exports'))

    def compare(self, raw: str, qcow2: str) -> None:
        self.assertEqual('', differs(raw, qcow2))

    def test_two_disks_restored_together(self):
        self.start_services()
        self.kill_and_restore_both()

    def test_two_disks_live_restore_streams_the_root(self):
        """With [agent] live_restore, the root streams while the guest
        runs, the other disk is restored whole before it starts: at the
        end both equal the restore point."""
        self.start_services(options={'agent': {'live_restore': True}})
        rec, files = self.kill_and_restore_both()
        self.assertIn('live-%s' % rec.restore_point_id, files['vd0'])
        self.assertRegex(self.svc.agent.log(),
                         r'Instance \S+ restarted from restore point %s '
                         r'\(pid \d+; running after [0-9.]+ s, restored '
                         r'after [0-9.]+ s, live\)' % rec.restore_point_id)

    def test_upgrade_to_multi_disk_sends_every_disk_whole(self):
        """An agent that shipped the root alone ([agent] multi_disk off,
        as with a manager before RPC 1.5) is restarted with it on: its
        next delta carries both disks whole (the root's frozen overlay
        and the other disk read through the chains QEMU has open), and a
        restart restores both."""
        self.start_services(options={'agent': {'multi_disk': False}})
        g = self.start_guest()
        inst = self.protect(g)
        first = self.wait_points(inst, 1)[0]
        rp = self.svc.store.get_restore_point(inst, first.id)
        self.assertIsNone(rp.disks)
        self.assertEqual(ROOT_SIZE, rp.virtual_size)
        for device, offset, length, pattern in WRITES:
            g.write(device, offset, length, pattern)
        written = self.mark('patterns written, root shipped alone')
        rows = self.wait_points(inst, loop.AHEAD + 1, after=written)
        self.assertIsNone(self.svc.store.get_restore_point(
            inst, rows[-1].id).disks)
        self.svc.agent.stop()
        self.svc.options['agent']['multi_disk'] = True
        services.write_config(self.svc.conf_file, self.svc.options)
        self.svc.agent.start()
        switched = self.mark('agent restarted with [agent] multi_disk on')
        row = self.wait_for(
            lambda: [r for r in self.svc.db.list_restore_points(inst)
                     if loop.ts(r.created_at) > switched and r.disks],
            60, 'a restore point of both disks')[0]
        self.assertIn('protected disks now', self.svc.agent.log())
        disks = self.split(inst, row.id)
        for device, offset, length, pattern in WRITES:
            self.assertTrue(holds(disks[device], offset, length, pattern),
                            (device, offset))
        self.kill_and_check(g, inst, row)

    def start_guest(self) -> TwoDiskGuest:
        driver = hypervisor.get_driver(self.svc.conf, 'qemu')
        os.makedirs(self.path('vms'), exist_ok=True)
        g = self.guest = TwoDiskGuest(driver, self.path('vms')).start()
        # NOTE: the driver lists writable disks only.
        self.assertEqual(['vd0', 'vd1'], g.disk_names)
        return g

    def kill_and_restore_both(self) -> tuple:
        g = self.start_guest()
        inst = self.protect(g)
        first = self.wait_points(inst, 1)[0]
        rp = self.svc.store.get_restore_point(inst, first.id)
        # The read-only config drive is not among the protected disks.
        self.assertEqual([('vd0', 'root', 0, ROOT_SIZE),
                          ('vd1', 'ephemeral', disk_layout.ALIGN,
                           DATA_SIZE)],
                         [(d['target'], d['role'], d['offset'], d['size'])
                          for d in rp.disks])
        self.mark('first point covers vd0 and vd1')

        for device, offset, length, pattern in WRITES:
            g.write(device, offset, length, pattern)
        written = self.mark('patterns written into both disks')
        # NOTE: the snapshots run ahead of the acks by at most AHEAD: the
        # point AHEAD after the first one recorded after the writes was
        # taken after them.
        rows = self.wait_points(inst, loop.AHEAD + 1, after=written)
        target = rows[-1]
        disks = self.split(inst, target.id)
        for device, offset, length, pattern in WRITES:
            self.assertTrue(holds(disks[device], offset, length, pattern),
                            'restore point %s lacks the write of 0x%02x at '
                            '%d of %s' % (target.id, pattern, offset,
                                          device))
        return self.kill_and_check(g, inst, target)

    def kill_and_check(self, g, inst: str, target) -> tuple:
        """SIGKILL the VM; the recovery restarts it on a point at least as
        new as ``target`` (which holds WRITES): both disks equal it."""
        # NOTE: the agent sees QEMU die, and the manager records the
        # recovery, before kill() has reaped it: the recovery must be
        # newer than the instant before the kill.
        before_kill = time.time()
        g.kill()
        self.mark('VM SIGKILLed')
        recs = self.wait_for(
            lambda: [r for r in self.svc.db.list_recoveries(inst)
                     if r.state in ('succeeded', 'failed')],
            60, 'the recovery of %s to end' % inst)
        rec = recs[-1]
        self.assertEqual('succeeded', rec.state, rec.error)
        self.assertGreater(loop.ts(rec.created_at), before_kill)
        # NOTE: snapshots go on until the kill: the recovery takes the
        # newest point, the one checked above or a later one.
        chosen = [r for r in self.svc.db.list_restore_points(inst)
                  if r.id == rec.restore_point_id]
        self.assertEqual(1, len(chosen))
        self.assertGreaterEqual(chosen[0].number, target.number)
        self.wait_for(lambda: self.svc.db.get_instance(inst).status ==
                      'protected', 15, '%s to be protected again' % inst)
        recovered = self.mark('recovered to %s' % rec.restore_point_id)

        # The restarted VM runs on both disks of the restore point.
        spec = self.svc.agent_state(inst)['spec']
        self.assertEqual('vd0', spec['disk'])
        workdir = os.path.dirname(spec['disk_path'])
        files = {'vd0': spec['disk_path'],
                 'vd1': os.path.join(workdir, 'restored-%s-vd1.qcow2'
                                     % rec.restore_point_id)}
        with open('/proc/%d/cmdline' % spec['pid'], 'rb') as f:
            cmdline = f.read()
        for path in files.values():
            self.assertIn(path.encode(), cmdline)
        disks = self.split(inst, rec.restore_point_id)
        for device, offset, length, pattern in WRITES:
            self.assertTrue(holds(disks[device], offset, length, pattern))
        for device in ('vd0', 'vd1'):
            self.compare(disks[device], files[device])
        self.mark('both disks equal restore point %s' % rec.restore_point_id)

        # Protection goes on from them: both disks, nothing written since.
        rows = self.wait_points(inst, 2, after=recovered)
        newest = self.split(inst, rows[-1].id)
        for device in ('vd0', 'vd1'):
            self.compare(newest[device], files[device])
        self.assertEqual([rec.id], [r.id for r in
                                    self.svc.db.list_recoveries(inst)])
        r = self.svc.manage('store', 'verify')
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        return rec, files
