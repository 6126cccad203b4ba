"""One manager and one agent protecting 200 VMs: CPU and memory per instance.

The real daemons, each in its own process, over a private RabbitMQ broker:
``python -m ha_snapshot.cmd.manager --config-file F`` and ``python -m
ha_snapshot.cmd.agent --config-file F`` (file store, sqlite database made
by ``python -m ha_snapshot.cmd.manage --config-file F db sync``, policy
``fixed`` with ``interval`` 10 s, 5 s with --quick). This process starts
200 (20 with --quick) QEMU VMs (``-machine none``, a 64 MiB qcow2 disk
each) through the ``qemu`` driver in batches, records each in the
manager's database and casts ``protect`` to the agent, as the demo and
the Nova hook do; VMs write nothing (the cost of protection itself).

1. Baseline: the two daemons idle with zero instances, CPU over a window
   of 20 s (quick 4 s) and RSS at its end.
2. N instances protected; once every one has its baseline restore point
   (a durable delta in the database), the measurement window: 60 s (quick
   20 s) of CPU of each process (psutil; the agent's qemu-img children
   are counted) and RSS at its end.

Keys: ``manager_cpu_fraction`` and ``agent_cpu_fraction`` (CPU seconds /
window seconds: 1.0 is one core busy), ``manager_rss_mb``, ``agent_rss_mb``,
``agent_kb_per_instance`` = (agent RSS with N - agent RSS with 0) / N,
``manager_kb_per_instance`` likewise, the same figures with zero instances
under ``baseline``, the deltas made durable in the window against
N * window / interval (``snapshot_rate_achieved``: the fraction of the
snapshots due that were made and made durable; 1.0 = every instance
snapshotted on time) and the CPU of the VMs and the broker. Every process
started here is stopped by its pid.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil

import _common as c

from oslo_config import cfg

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot import conf as ha_conf
from ha_snapshot.db import api as db_api
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.hypervisor import process as hv_process
from ha_snapshot import rpc

AGENT_HOST = 'scale-host'
PROJECT = 'scale'
DISK = 64 * c.MiB
VM_RSS_GUESS = 40 * c.MiB


def write_config(path, work, url, interval, *, connection=None,
                 manager='scale-manager', extra='', spool='spool'):
    """The one config of both daemons; ``connection`` (default: sqlite in
    ``work``), ``extra``: more sections, as INI text; ``spool``: the
    manager's spool directory under ``work``."""
    text = """[DEFAULT]
transport_url = {url}

[database]
connection = {connection}

[storage]
backend_url = file://{work}/store

[manager]
spool_dir = {work}/{spool}
host = {manager}
listen_notifications = false

[agent]
state_dir = {work}/agent
host = {host}
hypervisor = qemu

[policy]
name = fixed
interval = {interval}

[qemu]
overlay_dir = {work}/overlays

[rpc_auth]
master_key_file = {work}/rpc-master.key
""".format(url=url, work=work, host=AGENT_HOST, interval=interval,
           manager=manager, spool=spool,
           connection=connection or 'sqlite:///%s/ha-snapshot.sqlite' % work)
    with open(path, 'w') as f:
        f.write(text + extra)
    c.write_master_key(os.path.join(work, 'rpc-master.key'))
    return path


def load_conf(path) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    ha_conf.register_opts(conf)
    conf(['--config-file', path], project='ha-snapshot',
         default_config_files=[])
    return conf


class Daemon:
    """One of the project's daemons, in its own process, log to a file."""

    def __init__(self, module, config, log_path, ready_text):
        self.name = module.rsplit('.', 1)[-1]
        self.log_path = log_path
        self.ready_text = ready_text
        self.log = open(log_path, 'ab')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', module, '--config-file', config],
            stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('%s exited with %s: %s' % (
                    self.name, self.proc.returncode, self.tail()))
            with open(self.log_path, errors='replace') as f:
                if self.ready_text in f.read():
                    return
            time.sleep(0.1)
        raise RuntimeError('%s not ready after %d s: %s' % (
            self.name, timeout, self.tail()))

    def tail(self, n=3000):
        with open(self.log_path, errors='replace') as f:
            return f.read()[-n:]

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def children_cpu(self) -> float:
        """CPU of the children it waited for (qemu-img, prlimit)."""
        t = self.ps.cpu_times()
        return t.children_user + t.children_system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def threads(self) -> int:
        return self.ps.num_threads()

    def terminate(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                c.log('%s did not stop in 60 s: SIGKILL', self.name)
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def window(seconds, daemons, others) -> dict:
    """CPU of each daemon (and of ``others``) over ``seconds``; RSS at the
    end."""
    t0 = time.monotonic()
    cpu0 = {d.name: d.cpu() for d in daemons}
    kids0 = {d.name: d.children_cpu() for d in daemons}
    other0 = {k: c.cpu_of(v) for k, v in others.items()}
    host0 = psutil.cpu_times()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    host1 = psutil.cpu_times()
    out = {}
    for d in daemons:
        out[d.name + '_cpu_fraction'] = c.rnd(
            (d.cpu() - cpu0[d.name]) / elapsed, 4)
        out[d.name + '_children_cpu_fraction'] = c.rnd(
            (d.children_cpu() - kids0[d.name]) / elapsed, 4)
        out[d.name + '_rss_mb'] = c.rnd(d.rss() / c.MiB, 1)
        out[d.name + '_threads'] = d.threads()
    for k, v in others.items():
        out[k + '_cpu_fraction'] = c.rnd((c.cpu_of(v) - other0[k]) / elapsed,
                                         4)
    out['host_cpu_fraction'] = c.rnd(c.host_busy(host0, host1) / elapsed, 3)
    out['host_cpus'] = psutil.cpu_count()
    out['loadavg_1m'] = c.rnd(os.getloadavg()[0], 2)
    out['seconds'] = c.rnd(elapsed, 2)
    return out


START_RETRIES = []


def stop_all(daemons, vms) -> None:
    """Stop the daemons (all at once, then wait for each), then kill and
    reap the VMs (``vms``: what start_vms appended)."""
    for d in daemons:
        d.terminate()
    for d in reversed(daemons):
        d.stop()
    for _name, _spec, vm, _node in vms:
        try:
            os.kill(vm.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _name, _spec, vm, _node in vms:
        try:
            os.waitpid(vm.pid, 0)
        except ChildProcessError:
            pass


def start_vm(driver, spec):
    """driver.start, again after a failed start (reported in the result).

    NOTE: QEMU 7.2 may send an event (RESUME) on a QMP connection before
    its greeting when the client connects while QEMU is still starting;
    the driver refuses such a connection (and kills that QEMU).
    """
    for attempt in range(3):
        try:
            return driver.start(spec)
        except hv_base.VMStartFailed as e:
            if attempt == 2:
                raise
            START_RETRIES.append(str(e).splitlines()[0][:300])
            c.log('VM %s did not start (%s); again', spec.name,
                  str(e).splitlines()[0][:200])


def start_vms(driver, work, count, first, started):
    """Start VMs ``first``..``first+count-1``; each (name, spec, vm, node)
    goes into ``started`` as soon as it runs (the caller kills them all);
    returns this batch's."""
    out = []
    for i in range(first, first + count):
        name = 'scale%03d' % i
        spec = hv_process.bare_spec(os.path.join(work, 'vms'), name, DISK)
        vm = start_vm(driver, spec)
        started.append((name, spec, vm, None))
        node = driver.disks(vm)[0].name
        # NOTE: QMP serves one client: the agent attaches on its own.
        driver.detach(vm)
        started[-1] = (name, spec, vm, node)
        out.append(started[-1])
    return out


def protect_vms(driver, wd, n: int, batch: int, vms: list, db,
                api) -> dict:
    """Start ``n`` VMs, ``batch`` at a time, and protect each (a row in
    the database, ``protect`` cast to the agent); {instance: vm}."""
    instances = {}
    for first in range(0, n, batch):
        count = min(batch, n - first)
        for name, spec, vm, node in start_vms(driver, wd, count, first,
                                              vms):
            inst = str(uuid.uuid4())
            db.create_instance(inst, PROJECT, host=AGENT_HOST,
                               status='protecting', driver='qemu')
            api.protect(AGENT_HOST, inst, PROJECT, {
                'name': spec.name, 'qmp_path': spec.qmp_path,
                'pid': vm.pid, 'log_path': spec.log_path,
                'disk': node, 'disk_path': spec.disks[0].path,
                'vm': {'machine': 'none', 'node': node}})
            instances[inst] = vm
        c.log('%d/%d VMs started and protected', len(vms), n)
    return instances


def wait_for_baselines(db, n: int, agent) -> None:
    """Until ``n`` instances of AGENT_HOST have a restore point."""
    limit = max(120, 2 * n)
    deadline = time.monotonic() + limit
    while True:
        rows = db.list_instances(host=AGENT_HOST)
        done = sum(1 for r in rows if r.newest_restore_point_id)
        if done >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError('only %d of %d instances have a baseline '
                               'after %d s: %s' % (done, n, limit,
                                                   agent.tail()))
        time.sleep(0.5)


def main():
    def more(p):
        p.add_argument('--instances', type=int, default=None,
                       help='Protected VMs (default 200, quick 20).')
        p.add_argument('--interval', type=float, default=None,
                       help='[policy] interval, seconds (default 10, quick '
                            '5).')
        p.add_argument('--window', type=float, default=None,
                       help='Measurement window, seconds (default 60, '
                            'quick 20).')
        p.add_argument('--batch', type=int, default=25,
                       help='VMs started and protected per batch.')
    args = c.parse_args(__doc__, more)
    c.exit_on_sigterm()
    n = args.instances or (20 if args.quick else 200)
    interval = args.interval or (5.0 if args.quick else 10.0)
    seconds = args.window or (20.0 if args.quick else 60.0)
    idle_seconds = 4.0 if args.quick else 20.0
    avail = psutil.virtual_memory().available
    if n * VM_RSS_GUESS + 2 * c.GiB > avail:
        raise SystemExit('%d VMs need about %d MiB; %d MiB available'
                         % (n, n * VM_RSS_GUESS // c.MiB, avail // c.MiB))
    vms, daemons = [], []
    with c.workdir(args, 'scale') as wd, c.rabbitmq(wd) as broker:
        os.makedirs(os.path.join(wd, 'vms'))
        config = write_config(os.path.join(wd, 'ha-snapshot.conf'), wd,
                              broker.transport_url, interval)
        c.run(sys.executable, '-m', 'ha_snapshot.cmd.manage',
              '--config-file', config, 'db', 'sync')
        conf = load_conf(config)
        transport = rpc.get_transport(conf)
        db = db_api.Database(conf)
        driver = hypervisor.get_driver(conf, 'qemu')
        try:
            manager = Daemon('ha_snapshot.cmd.manager', config,
                             os.path.join(wd, 'manager.log'),
                             'ha-snapshot-manager started')
            daemons.append(manager)
            agent = Daemon('ha_snapshot.cmd.agent', config,
                           os.path.join(wd, 'agent.log'),
                           'ha-snapshot-agent started')
            daemons.append(agent)
            manager.wait_ready()
            agent.wait_ready()
            c.log('manager (pid %d) and agent (pid %d) started; idle '
                  'window of %.0f s', manager.proc.pid, agent.proc.pid,
                  idle_seconds)
            time.sleep(1)  # let start-up work settle
            broker_procs = [psutil.Process(p) for p in broker.pids()]
            idle = window(idle_seconds, daemons, {'broker': broker_procs})
            c.log('idle: manager %.3f cpu, %.1f MB; agent %.3f cpu, %.1f MB',
                  idle['manager_cpu_fraction'], idle['manager_rss_mb'],
                  idle['agent_cpu_fraction'], idle['agent_rss_mb'])

            api = agent_rpcapi.AgentAPI(
                transport, signer=c.manager_signer(conf))
            t_start = time.monotonic()
            instances = protect_vms(driver, wd, n, args.batch, vms, db, api)
            started_s = time.monotonic() - t_start
            wait_for_baselines(db, n, agent)
            baseline_s = time.monotonic() - t_start
            c.log('every instance has its baseline %.1f s after the first '
                  'VM started; measuring for %.0f s', baseline_s, seconds)
            seq0 = {r.uuid: r.last_sequence or 0
                    for r in db.list_instances(host=AGENT_HOST)}
            vm_procs = [psutil.Process(vm.pid) for vm in instances.values()]
            busy = window(seconds, daemons, {'broker': broker_procs,
                                             'vms': vm_procs})
            rows = db.list_instances(host=AGENT_HOST)
            deltas = sum((r.last_sequence or 0) - seq0.get(r.uuid, 0)
                         for r in rows)
            vm_rss = sum(p.memory_info().rss for p in vm_procs)
            errors = _count(agent.log_path, ' ERROR ') + _count(
                manager.log_path, ' ERROR ')
            warnings = _count(agent.log_path, ' WARNING ') + _count(
                manager.log_path, ' WARNING ')
            first_problems = (_first(agent.log_path, (' ERROR ', ' WARNING '))
                              + _first(manager.log_path,
                                       (' ERROR ', ' WARNING ')))
            c.log('busy: manager %.3f cpu, %.1f MB; agent %.3f cpu, %.1f MB; '
                  '%d deltas durable (expected %.0f)',
                  busy['manager_cpu_fraction'], busy['manager_rss_mb'],
                  busy['agent_cpu_fraction'], busy['agent_rss_mb'], deltas,
                  n * busy['seconds'] / interval)
        finally:
            stop_all(daemons, vms)
            db.dispose()
            transport.cleanup()

    expected = n * busy['seconds'] / interval
    result = {
        'benchmark': 'scale', 'quick': args.quick, 'instances': n,
        'interval_s': interval, 'window_s': busy['seconds'],
        'manager_cpu_fraction': busy['manager_cpu_fraction'],
        'manager_rss_mb': busy['manager_rss_mb'],
        'agent_cpu_fraction': busy['agent_cpu_fraction'],
        'agent_rss_mb': busy['agent_rss_mb'],
        'agent_children_cpu_fraction': busy['agent_children_cpu_fraction'],
        'agent_kb_per_instance': c.rnd(
            (busy['agent_rss_mb'] - idle['agent_rss_mb']) * 1024 / n, 1),
        'manager_kb_per_instance': c.rnd(
            (busy['manager_rss_mb'] - idle['manager_rss_mb']) * 1024 / n, 1),
        'agent_threads': busy['agent_threads'],
        'manager_threads': busy['manager_threads'],
        'deltas_durable': deltas,
        'deltas_expected': round(expected, 1),
        'snapshot_rate_achieved': c.rnd(deltas / expected, 3),
        'agent_cpu_ms_per_snapshot': c.rnd(
            busy['agent_cpu_fraction'] * busy['seconds'] * 1000
            / max(1, deltas), 1),
        'manager_cpu_ms_per_snapshot': c.rnd(
            busy['manager_cpu_fraction'] * busy['seconds'] * 1000
            / max(1, deltas), 1),
        'vms_cpu_fraction': busy['vms_cpu_fraction'],
        'vms_rss_mb': c.rnd(vm_rss / c.MiB, 1),
        'broker_cpu_fraction': busy['broker_cpu_fraction'],
        'host_cpu_fraction': busy['host_cpu_fraction'],
        'host_cpus': busy['host_cpus'], 'loadavg_1m': busy['loadavg_1m'],
        'start_seconds': c.rnd(started_s, 1),
        'all_baselines_seconds': c.rnd(baseline_s, 1),
        'log_errors': errors, 'log_warnings': warnings,
        'log_first_problems': first_problems[:6],
        'vm_start_retries': len(START_RETRIES),
        'vm_start_failures': START_RETRIES[:3],
        'baseline': {k: idle[k] for k in (
            'manager_cpu_fraction', 'manager_rss_mb', 'agent_cpu_fraction',
            'agent_rss_mb', 'broker_cpu_fraction', 'host_cpu_fraction',
            'seconds')},
        'definition': 'cpu_fraction = CPU seconds of the process and its '
                      'waited-for children / window seconds (1.0 = one '
                      'core); RSS at the end of the window; baseline = the '
                      'same daemons idle with zero instances, same run',
    }
    c.emit(result)


def _first(path, texts, n=3) -> list:
    """The first ``n`` lines holding one of ``texts``, shortened."""
    out = []
    try:
        with open(path, errors='replace') as f:
            for line in f:
                if any(t in line for t in texts):
                    out.append(line.strip()[:300])
                    if len(out) >= n:
                        break
    except OSError:
        pass
    return out


def _count(path, text) -> int:
    try:
        with open(path, errors='replace') as f:
            return sum(1 for line in f if text in line)
    except OSError:
        return 0


if __name__ == '__main__':
    os.environ.setdefault('LC_ALL', 'C')
    main()
