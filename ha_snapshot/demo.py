"""The local demo: real QEMU VMs protected, one killed, recovered, checked.

Everything runs on this host with embedded defaults: a file store and a
sqlite database in a work directory, the manager and the agent as
in-process services talking over oslo.messaging (``fake://`` unless
``--transport-url`` names a broker), QEMU VMs with qcow2 disks and no
guest. A workload writes numbered blocks into each disk through the QEMU
monitor (``qemu-io``), keeping the time of every write; the agent snapshots
and ships; one VM is SIGKILLed; the health monitor reports it and the
manager recovers it (``restart``). The recovered disk must equal the
newest durable restore point, and that restore point must hold every
write finished before its snapshot and none begun after it.
"""

import dataclasses
import logging
import os
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
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.manager import service as manager_service
from ha_snapshot import rpc
from ha_snapshot import statuses

MiB = 1 << 20
BLOCK = 64 * 1024
HOST = 'demo-host'


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
        'agent': {'state_dir': os.path.join(work, 'agent'), 'host': HOST,
                  'health_interval': 0.2, 'health_failures': 2},
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


def run(work: str, *, vms: int = 2, seconds: float = 20.0,
        rate_bps: float = 2 * MiB, interval: float = 1.0,
        rpo_target: float = 5.0, transport_url: str = 'fake://',
        progress=print) -> dict:
    os.makedirs(work, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(work, 'demo.log'), level=logging.INFO,
        format='%(asctime)s %(levelname)s %(name)s %(message)s')
    logging.getLogger('oslo_utils.imageutils.format_inspector').setLevel(
        logging.ERROR)
    conf = make_conf(work, interval, rpo_target)
    migration.upgrade(conf)
    transport = rpc.get_transport(conf, url=transport_url)
    driver = hypervisor.get_driver(conf, 'qemu')
    manager = manager_service.ManagerService(conf, transport)
    agent = agent_service.AgentService(conf, transport, driver)
    manager.start()
    agent.start()
    report = {'verified': False}
    started_vms, instances = [], {}
    try:
        for i in range(vms):
            inst = str(uuid.uuid4())
            disk = os.path.join(work, 'vm%d.qcow2' % i)
            subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', disk,
                            '256M'], check=True)
            spec = hv_base.VMSpec(
                name='vm%d' % i, qmp_path=os.path.join(work, 'vm%d.qmp' % i),
                log_path=os.path.join(work, 'vm%d.log' % i),
                disks=(hv_base.DiskSpec(path=disk),))
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
                'vm': {'machine': 'none', 'node': node}})
            vm = wait_attached(agent, inst)
            w = Workload(driver, vm, node, rate_bps)
            instances[inst] = (vm, w)
            progress('vm%d (%s) protected, pid %d' % (i, inst, vm.pid))
        for _vm, w in instances.values():
            w.start()
        rpo_max, t_end = 0.0, time.monotonic() + seconds
        while time.monotonic() < t_end:
            time.sleep(0.2)
            for inst in instances:
                p = agent.instances.get(inst)
                if p and p.agent.last_durable_at:
                    rpo_max = max(rpo_max,
                                  time.monotonic() - p.agent.last_durable_at)
        victim = next(iter(instances))
        vm, workload = instances[victim]
        workload.stopped.set()
        workload.join(10)
        snap_agent = agent.instances[victim].agent
        with snap_agent.durable:
            snap_agent.durable.wait(30)
        shipped = sum(i.agent.shipped_bytes for i in agent.instances.values())
        changed = sum(i.agent.shipped_changed_bytes
                      for i in agent.instances.values())
        progress('killing %s (pid %d) with SIGKILL' % (victim, vm.pid))
        killed = time.monotonic()
        os.kill(vm.pid, signal.SIGKILL)
        detect = recover = None
        deadline = killed + 120
        while time.monotonic() < deadline and recover is None:
            time.sleep(0.05)
            row = manager.db.get_instance(victim)
            recovering = row.status == statuses.InstanceStatus.RECOVERING
            if detect is None and (recovering or row.last_report_reason):
                detect = time.monotonic() - killed
                progress('detected after %.2f s: %s' % (
                    detect, row.last_report_reason))
            recs = manager.db.list_recoveries(victim)
            if recs and recs[-1].state in statuses.FINAL_RECOVERY_STATES:
                if recs[-1].state == statuses.RecoveryState.FAILED:
                    raise RuntimeError('recovery failed: %s' % recs[-1].error)
                recover = time.monotonic() - killed
        if recover is None:
            raise RuntimeError('no recovery within 120 s')
        progress('recovered after %.2f s' % recover)
        rec = manager.db.list_recoveries(victim)[-1]
        new = agent.instances[victim].agent
        restored = new.state.spec.disk_path
        export = os.path.join(work, 'rp.raw')
        manager.manager.store.export(victim, export,
                                     rp_id=rec.restore_point_id)
        same = subprocess.run(['qemu-img', 'compare', '-U', '-q', '-f',
                               'raw', export, restored]).returncode == 0
        taken = snap_agent.taken_at.get(rec.restore_point_id)
        problems = check_restore_point(export, workload.writes, taken)
        report.update({
            'verified': bool(same and not problems and taken is not None),
            'recovered_disk_equals_restore_point': same,
            'write_problems': problems[:10],
            'restore_points': len(manager.manager.store.restore_points(
                victim)),
            'bytes_written': sum(len(w.writes) * BLOCK
                                 for _vm, w in instances.values()),
            'bytes_shipped': shipped,
            'changed_bytes_shipped': changed,
            'rpo_seconds_max': round(rpo_max, 3),
            'detect_seconds': round(detect or -1, 3),
            'recover_seconds': round(recover, 3),
        })
        return report
    finally:
        for _vm, w in instances.values():
            w.stopped.set()
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
