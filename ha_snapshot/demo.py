"""The local demo: real QEMU VMs protected, one killed, recovered, checked.

Everything runs on this host with embedded defaults: a file store and a
sqlite database in a work directory, the manager and the agent as
in-process services talking over oslo.messaging (``fake://`` unless
``--transport-url`` names a broker), QEMU VMs with qcow2 disks. The agent
snapshots and ships; one VM is SIGKILLed; the health monitor reports it
and the manager recovers it (``restart``). The recovered disk must equal
the newest durable restore point.

By default the VMs are real Linux guests (ha_snapshot/guest: built from
Debian packages, booted by SeaBIOS under TCG) whose own workload appends
fsync'ed records and commits sqlite transactions, each reported on the
serial console and stamped by the host as it arrives. Then the recovered
VM must boot (its console shows the guest's own check and new records),
the restore point's file system must be clean after journal replay, and it
must hold every record and transaction the guest reported before the
snapshot was taken. With ``guest=False`` the VMs have no guest: a workload
writes numbered blocks through the QEMU monitor (``qemu-io``), and the
restore point must hold every write finished before its snapshot and none
begun after it.
"""

import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid

from oslo_config import cfg

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.agent import service as agent_service
from ha_snapshot import conf as ha_conf
from ha_snapshot.db import migration
from ha_snapshot.guest import boot as guest_boot
from ha_snapshot.guest import build as guest_build
from ha_snapshot.guest import records as guest_records
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import process as hv_process
from ha_snapshot.manager import service as manager_service
from ha_snapshot import rpc
from ha_snapshot import statuses
from ha_snapshot.storage import memory as memory_store

MiB = 1 << 20
BLOCK = 64 * 1024
HOST = 'demo-host'
GUEST_TIMEOUT = 120
RECOVERY_TIMEOUT = 240
"""Seconds from the kill to the end of its recovery (a TCG guest on a
busy host: most of it is QEMU starting and the guest resuming)."""
DEMO_QUIESCE_SECONDS = 5
"""Seconds between application-consistent points of the demo guests."""


@dataclasses.dataclass
class Write:
    slot: int
    pattern: int
    started: float
    ended: float


def make_conf(work: str, interval: float,
              rpo_target: float) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    ha_conf.register_opts(conf)
    conf([], project='ha-snapshot', default_config_files=[])
    overrides = {
        'storage': {'backend_url': 'file://' + os.path.join(work, 'store'),
                    'chunk_size': MiB},
        'database': {'connection': 'sqlite:///' + os.path.join(
            work, 'ha-snapshot.sqlite')},
        'manager': {'spool_dir': os.path.join(work, 'spool'),
                    'host': 'demo-manager', 'listen_notifications': False},
        # NOTE: the demo's guests run under TCG: on a busy host their
        # agent answers and freezes in seconds, not the milliseconds of a
        # KVM guest; the defaults would leave every point crash-consistent.
        'agent': {'state_dir': os.path.join(work, 'agent'), 'host': HOST,
                  'health_interval': 0.2, 'health_failures': 2,
                  'quiesce_ping_timeout': 5.0, 'quiesce_max_freeze': 3.0},
        'policy': {'name': 'adaptive', 'rpo_target': rpo_target,
                   'interval': interval, 'min_interval': interval},
        'recovery': {'cooldown': 5},
        'qemu': {'overlay_dir': os.path.join(work, 'overlays')},
    }
    for group, values in overrides.items():
        for name, value in values.items():
            conf.set_override(name, value, group=group)
    return conf


class Workload(threading.Thread):
    """Writes numbered 64 KiB blocks into fresh slots of one disk."""

    def __init__(self, driver, vm, disk: str, rate_bps: float):
        super().__init__(daemon=True)
        self.driver, self.vm, self.disk = driver, vm, disk
        self.period = BLOCK / rate_bps
        self.writes = []
        self.stopped = threading.Event()

    def run(self):
        slot = 0
        while not self.stopped.wait(self.period):
            pattern = 1 + slot % 255
            started = time.time()
            try:
                self.driver.write(self.vm, self.disk, slot * BLOCK, BLOCK,
                                  pattern)
            except Exception:
                return  # the VM is gone
            self.writes.append(Write(slot, pattern, started, time.time()))
            slot += 1


def wait_attached(agent, instance: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = agent.instances.get(instance)
        if p is not None and p.agent.vm is not None:
            return p.agent.vm
        time.sleep(0.05)
    raise RuntimeError('the agent did not attach to %s within %.0f s'
                       % (instance, timeout))


def check_restore_point(path: str, writes: list, taken_at: float) -> list:
    """Problems in ``path`` (raw) against the write log at ``taken_at``."""
    problems = []
    with open(path, 'rb') as f:
        for w in writes:
            f.seek(w.slot * BLOCK)
            data = f.read(BLOCK)
            held = data == bytes([w.pattern]) * BLOCK
            if w.ended < taken_at and not held:
                problems.append('write %d (ended %.3f) missing' % (w.slot,
                                                                  w.ended))
            if w.started > taken_at and data != bytes(BLOCK):
                problems.append('write %d (began after the snapshot) '
                                'present' % w.slot)
    return problems


def start_guest(driver, image, work: str, i: int) -> tuple:
    """A real guest on its own copy of the image's disk: (VMSpec, its
    console, the protect spec's 'vm' object)."""
    disk = os.path.join(work, 'vm%d.qcow2' % i)
    shutil.copyfile(image.disk, disk)
    spec, paths = guest_boot.spec(image, 'vm%d' % i, work, disk,
                                  kernel_boot=False)
    vm, console = guest_boot.start(driver, spec, paths)
    # NOTE: a restart starts the recovered guest paused, so that its disk
    # can be compared with the restore point before the guest writes.
    vm_opts = {'machine': 'q35', 'accel': 'tcg',
               'memory_mb': spec.memory_mb, 'node': 'disk0',
               'device': 'vd0', 'paused': True,
               'serial_log': os.path.join(work, 'vm%d.restarted.console'
                                          % i)}
    return spec, vm, console, vm_opts


def _size(n: float) -> str:
    for unit in ('B', 'KiB', 'MiB'):
        if n < 1024 or unit == 'MiB':
            return ('%d %s' if unit == 'B' else '%.1f %s') % (n, unit)
        n /= 1024


def status_line(elapsed: float, agent, instances: dict,
                consoles: dict) -> str:
    """One line of live progress: each VM's restore points, RPO and
    bytes shipped (compressed / raw)."""
    parts = []
    for inst, (vm, _w) in instances.items():
        p = agent.instances.get(inst)
        if p is None:
            continue
        a = p.agent
        rpo = ('%.1f s' % (time.monotonic() - a.last_durable_at)
               if a.last_durable_at else '-')
        part = '%s: %d rp, RPO %s, %s / %s' % (
            vm.name, a.durable_count, rpo, _size(a.shipped_bytes),
            _size(a.shipped_changed_bytes))
        console = consoles.get(inst)
        if console is not None:
            part += ', %d records' % (console.durable[-1][0]
                                      if console.durable else 0)
        parts.append(part)
    return '%3.0f s  %s' % (elapsed, ' | '.join(parts))


def wait_file_line(path: str, pattern: str, timeout: float):
    """The first line of the growing file ``path`` matching ``pattern``
    (QEMU appends the recovered guest's console there)."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, errors='replace') as f:
                for line in f:
                    m = regex.search(line)
                    if m:
                        return m
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            return None
        threading.Event().wait(0.1)


def check_guest(check, console, taken: float | None, restarted_log: str
                ) -> dict:
    """What a user would check after the recovery of a real guest."""
    durable = console.durable_before(taken) if taken else 0
    committed = console.committed_before(taken) if taken else 0
    recs, db = check.records, check.database
    first = wait_file_line(restarted_log, r'DURABLE (\d+)', GUEST_TIMEOUT)
    verify = wait_file_line(restarted_log, r'VERIFY \w+.*', 1)
    lost = max(0, durable - recs.contiguous)
    tx_lost = max(0, committed - (db.transactions if db and db.ok else 0))
    report = {
        'guest_booted': first is not None,
        'recovered_guest_verify': verify.group(0) if verify else None,
        'recovered_guest_first_record': int(first.group(1)) if first
        else None,
        'fsck_clean': check.fsck_clean,
        'records_durable_before_restore_point': durable,
        'records_in_restore_point': recs.records,
        'records_lost': lost,
        # NOTE: torn among the durable ones is a loss; after them (written,
        # not yet fsynced at the snapshot) crash consistency allows it.
        'records_torn': (0 if recs.durable_intact(durable)
                         else recs.torn + recs.out_of_order),
        'records_torn_after_durable': (recs.torn + recs.out_of_order
                                       if recs.durable_intact(durable)
                                       else 0),
        'transactions_committed_before_restore_point': committed,
        'transactions_in_restore_point': db.transactions if db else 0,
        'transactions_lost': tx_lost,
        'database_ok': bool(db and db.ok)}
    report['guest_verified'] = bool(
        taken is not None and first is not None and check.fsck_clean
        and recs.durable_intact(durable) and not recs.tail_bytes
        and not lost and db is not None and db.ok and not tx_lost
        and report['recovered_guest_first_record'] == recs.whole + 1)
    return report


def wait_recovery(manager, inst: str, killed: float, progress) -> tuple:
    """(detect seconds, recover seconds) of the recovery after a kill."""
    detect = recover = None
    deadline = killed + RECOVERY_TIMEOUT
    recs = []
    while time.monotonic() < deadline and recover is None:
        time.sleep(0.05)
        row = manager.db.get_instance(inst)
        recovering = row.status == statuses.InstanceStatus.RECOVERING
        if detect is None and (recovering or row.last_report_reason):
            detect = time.monotonic() - killed
            progress('detected after %.2f s: %s' % (
                detect, row.last_report_reason))
        recs = manager.db.list_recoveries(inst)
        if recs and recs[-1].state in statuses.FINAL_RECOVERY_STATES:
            if recs[-1].state == statuses.RecoveryState.FAILED:
                raise RuntimeError('recovery failed: %s' % recs[-1].error)
            recover = time.monotonic() - killed
    if recover is None:
        row = manager.db.get_instance(inst)
        last = ('recovery %s %s at step %s' % (
            recs[-1].id, recs[-1].state, recs[-1].step) if recs
            else 'no recovery started')
        raise RuntimeError(
            'no recovery within %d s of the kill: instance %s, last report '
            '%r; %s' % (RECOVERY_TIMEOUT, row.status, row.last_report_reason,
                        last))
    progress('recovered after %.2f s' % recover)
    return detect, recover


def resume_demo(manager, agent, inst: str, instances: dict, consoles: dict,
                vm_opts: dict, progress) -> dict:
    """Kill the VM that keeps its memory state once its newest restore
    point carries one; its recovery must resume it: no boot on its
    console, its records going on from the one after the last it had
    reported when the state was saved."""
    vm = instances[inst][0]
    console = consoles[inst]
    out = {'memory_state_restored': False, 'resumed_without_reboot': False,
           'resume_seconds': None}
    # NOTE: a state saved while the guest still boots (a slow host)
    # resumes a boot: the kill waits for one saved after the guest's
    # workload made a record durable.
    deadline = time.monotonic() + GUEST_TIMEOUT
    store, looked_at = manager.manager.store, None
    while True:
        points = manager.db.list_restore_points(inst)
        if points and points[-1].memory_state and (
                points[-1].id != looked_at):
            looked_at = points[-1].id
            state = memory_store.get(store, store.get_restore_point(
                inst, looked_at))
            at_stop = console.durable_before(state['saved_at'])
            if at_stop:
                break
        if time.monotonic() > deadline:
            out['memory_state_error'] = (
                'no restore point with the memory state of a running '
                'workload within %d s' % GUEST_TIMEOUT)
            return out
        time.sleep(0.1)
    progress('killing %s (pid %d), whose restore point #%d carries its '
             'memory state' % (inst, vm.pid, points[-1].number))
    killed = time.monotonic()
    os.kill(vm.pid, signal.SIGKILL)
    wait_recovery(manager, inst, killed, progress)
    restart = agent.restarts.get(inst, {})
    log = vm_opts[inst]['serial_log']
    first = wait_file_line(log, r'DURABLE (\d+)', GUEST_TIMEOUT)
    with open(log, errors='replace') as f:
        booted = 'GUEST up' in f.read()
    out.update({
        'memory_state_restored': bool(restart.get('memory_state_restored')),
        'resume_seconds': restart.get('resume_seconds'),
        'resumed_first_record': int(first.group(1)) if first else None,
        'records_durable_at_memory_state': at_stop,
        'resumed_guest_booted': booted})
    out['resumed_without_reboot'] = bool(
        out['memory_state_restored'] and not booted and first is not None
        and int(first.group(1)) - 1 >= at_stop)
    progress('resumed from memory in %s s: first record %s (%d durable at '
             'the saved instant)%s' % (
                 out['resume_seconds'], out['resumed_first_record'],
                 at_stop, '' if not booted else '; it BOOTED'))
    return out


def run(work: str, *, vms: int = 2, seconds: float = 20.0,
        rate_bps: float = 2 * MiB, interval: float = 1.0,
        rpo_target: float = 5.0, transport_url: str = 'fake://',
        progress=print, guest: bool = True,
        guest_cache: str | None = None) -> dict:
    os.makedirs(work, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(work, 'demo.log'), level=logging.INFO,
        format='%(asctime)s %(levelname)s %(name)s %(message)s')
    logging.getLogger('oslo_utils.imageutils.format_inspector').setLevel(
        logging.ERROR)
    # NOTE: before any service starts: a build that fails (no apt, no
    # network) leaves nothing running.
    image = None
    if guest:
        image = guest_build.build(guest_cache)
        progress('test guest %s (%.1f s)' % (
            'found in the cache' if image.cached else 'built',
            image.seconds))
    conf = make_conf(work, interval, rpo_target)
    migration.upgrade(conf)
    transport = rpc.get_transport(conf, url=transport_url)
    driver = hypervisor.get_driver(conf, 'qemu')
    manager = manager_service.ManagerService(conf, transport)
    agent = agent_service.AgentService(conf, transport, driver)
    manager.start()
    agent.start()
    report = {'verified': False}
    started_vms, instances, consoles, vm_opts = [], {}, {}, {}
    try:
        for i in range(vms):
            inst = str(uuid.uuid4())
            if guest:
                spec, vm, consoles[inst], vm_opts[inst] = start_guest(
                    driver, image, work, i)
                disk = spec.disks[0].path
            else:
                spec = hv_process.bare_spec(work, 'vm%d' % i, 256 * MiB)
                disk = spec.disks[0].path
                vm = driver.start(spec)
            started_vms.append(vm)
            node = driver.disks(vm)[0].name
            # NOTE: QMP serves one client: the agent attaches on its own.
            driver.detach(vm)
            manager.db.create_instance(
                inst, 'demo', host=HOST,
                status=statuses.InstanceStatus.PROTECTING, driver='qemu')
            agent_rpcapi.AgentAPI(transport).protect(HOST, inst, 'demo', {
                'name': spec.name, 'qmp_path': spec.qmp_path, 'pid': vm.pid,
                'log_path': spec.log_path, 'disk': node, 'disk_path': disk,
                'vm': vm_opts.get(inst) or {'machine': 'none',
                                            'node': node},
                # NOTE: a real guest's agent freezes it for an
                # application-consistent point every few seconds.
                'qga_path': spec.agent_path,
                'quiesce': str(DEMO_QUIESCE_SECONDS) if guest else None,
                # NOTE: the last real guest keeps its memory state with
                # every snapshot: its recovery resumes it.
                'memory': 'always' if guest and vms > 1 and i == vms - 1
                else None})
            vm = wait_attached(agent, inst)
            w = None if guest else Workload(driver, vm, node, rate_bps)
            instances[inst] = (vm, w)
            progress('vm%d (%s) protected, pid %d' % (i, inst, vm.pid))
        for inst, (_vm, w) in instances.items():
            if w is not None:
                w.start()
            else:
                consoles[inst].wait_durable(1, GUEST_TIMEOUT)
                progress('%s: booted, first record durable %.1f s after '
                         'QEMU started' % (instances[inst][0].name,
                                           consoles[inst].durable[0][1]
                                           - consoles[inst].started))
        rpo_max, t0 = 0.0, time.monotonic()
        t_end, next_line = t0 + seconds, t0
        progress('every second, per VM: restore points made durable, RPO '
                 '(seconds since its newest), bytes shipped (compressed '
                 'on the wire / raw changed bytes)%s' % (
                     ', records the guest made durable' if guest else ''))
        while time.monotonic() < t_end:
            time.sleep(0.2)
            for inst in instances:
                p = agent.instances.get(inst)
                if p and p.agent.last_durable_at:
                    rpo_max = max(rpo_max,
                                  time.monotonic() - p.agent.last_durable_at)
            if time.monotonic() >= next_line:
                next_line += 1.0
                progress(status_line(time.monotonic() - t0, agent,
                                     instances, consoles))
        victim = next(iter(instances))
        vm, workload = instances[victim]
        if workload is not None:
            workload.stopped.set()
            workload.join(10)
        snap_agent = agent.instances[victim].agent
        with snap_agent.durable:
            snap_agent.durable.wait(30)
        # NOTE: deltas go zstd-compressed: the guest's records (and the
        # demo's pattern blocks) compress well, so both sizes are shown.
        shipped = sum(i.agent.shipped_bytes for i in agent.instances.values())
        raw = sum(i.agent.shipped_changed_bytes
                  for i in agent.instances.values())
        memory_shipped = sum(i.agent.shipped_memory_bytes
                             for i in agent.instances.values())
        app_consistent = sum(i.agent.app_consistent
                             for i in agent.instances.values())
        root_disk = snap_agent.state.spec.disk or 'root disk'
        progress('killing %s (pid %d) with SIGKILL' % (victim, vm.pid))
        killed = time.monotonic()
        os.kill(vm.pid, signal.SIGKILL)
        detect, recover = wait_recovery(manager, victim, killed, progress)
        rec = manager.db.list_recoveries(victim)[-1]
        new = agent.instances[victim].agent
        restored = new.state.spec.disk_path
        export = os.path.join(work, 'rp.raw')
        point = manager.manager.store.export(victim, export,
                                             rp_id=rec.restore_point_id)
        same = subprocess.run(['qemu-img', 'compare', '-U', '-q', '-f',
                               'raw', export, restored]).returncode == 0
        taken = snap_agent.taken_at.get(rec.restore_point_id)
        if guest:
            driver.qmp(new.vm, 'cont')
            problems = []
            report.update(check_guest(
                guest_records.check_recovered(export, work),
                consoles[victim], taken, vm_opts[victim]['serial_log']))
            progress('recovered guest: %s, first record %s' % (
                report['recovered_guest_verify'],
                report['recovered_guest_first_record']))
            report['records_written'] = sum(
                c.durable[-1][0] for c in consoles.values() if c.durable)
        else:
            problems = check_restore_point(export, workload.writes, taken)
            report['bytes_written'] = sum(len(w.writes) * BLOCK
                                          for _vm, w in instances.values())
        if guest and vms > 1:
            resumed = resume_demo(manager, agent, list(instances)[-1],
                                  instances, consoles, vm_opts, progress)
            report.update(resumed)
        report.update({
            'verified': bool(same and not problems and taken is not None
                             and report.get('guest_verified', True)
                             and report.get('resumed_without_reboot',
                                            True)),
            'recovered_disk_equals_restore_point': same,
            'write_problems': problems[:10],
            'restore_points': len(manager.manager.store.restore_points(
                victim)),
            'bytes_shipped_compressed': shipped,
            'bytes_shipped_raw': raw,
            'bytes_shipped_memory_states': memory_shipped,
            # NOTE: the demo's VMs have one writable disk: their points
            # carry no layout (ha_snapshot/disk_layout.py).
            'disks_protected': [
                '%s (%s)' % (d['target'], d['role'])
                for d in point.disks] if point.disks else [
                '%s (root)' % root_disk],
            'app_consistent_restore_points': app_consistent,
            'rpo_seconds_max': round(rpo_max, 3),
            'detect_seconds': round(detect or -1, 3),
            'recover_seconds': round(recover, 3),
        })
        return report
    finally:
        for _vm, w in instances.values():
            if w is not None:
                w.stopped.set()
        for console in consoles.values():
            console.close()
        agent.stop()
        manager.stop()
        for p in list(agent.instances.values()):
            if p.agent.vm is not None:
                started_vms.append(p.agent.vm)
        for vm in started_vms:
            try:
                os.kill(vm.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
