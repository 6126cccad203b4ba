"""Achieved RPO of a VM writing 10 MiB/s, adaptive policy vs fixed interval.

The protection loop of the demo (ha_snapshot/demo.py), in this process: a
manager service and agent services over a private RabbitMQ broker, a file
store, a sqlite database, QEMU VMs (``-machine none``, 1 GiB qcow2 disk)
started through the ``qemu`` driver and protected by a ``protect`` cast.
Two VMs run side by side, each with its own agent service (own host name,
own ``[policy]``):

* ``adaptive``: ``[policy] name = adaptive``, ``rpo_target`` =
  ``--rpo-target`` (default 5), ``min_interval`` = ``--min-interval``
  (default 1, or a quarter of a target below 4 s; the product default, 5,
  would pin the interval to the target and the RPO above it);
* ``fixed`` (the baseline): ``[policy] name = fixed``, ``interval`` =
  the target.

As soon as the agent has attached to its VM (QMP serves one client: the
workload writes through the agent's connection, as the demo does), a
workload thread per VM writes 64 KiB blocks into consecutive fresh slots
through the QEMU monitor at 10 MiB/s, paced on an absolute schedule; when
it falls behind (the monitor or this process is busy) the blocks due go
in one command (same bytes, same offsets; ``blocks_per_command``). Once
both baselines are durable, for 60 s (20 s with --quick), a sampler
records every 0.1 s each VM's achieved RPO: now - the snapshot time
(``SnapshotAgent.taken_at``) of its newest durable restore point
(the newest of ``SnapshotAgent.restore_points``).

Two kinds of data (``variants``):

* ``pattern``: ``driver.write`` (``qemu-io write -P N``), as the demo does.
  64 KiB of one byte compresses ~3000x: shipping is nearly free.
* ``random``: incompressible, fresh random bytes per block: the block is
  written to a file and ``qemu-io NODE "write -q -s FILE OFF LEN"`` goes
  through ``human-monitor-command`` (the driver's ``qmp()`` pass-through).

Side by side, the two VMs share the host, the broker and the manager:
20 MiB/s in all. ``random_solo`` (full run only) is the adaptive VM alone
on ``random`` data, the load of the issue's wording, beside an
unprotected VM (``none``: no agent) running the same workload:
``guest_write_ratio`` is the protected VM's achieved write rate over the
unprotected one's (``guest_write_latency_ratio`` the same for the mean
time of a write command). The full run measures
``random``, ``pattern`` and ``random_solo`` one after the other; --quick
only ``random``. The top-level ``rpo_*`` keys are the adaptive policy's in
``random`` (the harder data, side by side with its baseline); ``baseline``
the fixed policy's in the same variant.

Per VM: nearest-rank percentiles of the samples, the number of restore
points, the intervals between snapshots and the lag from snapshot to
durable ack of each restore point, the shipped bytes, the achieved write
rate and the policy's decisions (reasons, overload states).

Per protected VM also the snapshot stall: the QMP ``transaction`` of
each snapshot (QEMU drains the guest's I/O for it), ``stall_p99_ms``; and
per variant ``phases``: a delta's life phase by phase (the shipper's, the
committer's and the manager's DEBUG timing lines), p50/p90/max in ms.

Goal (issue 16): ``rpo_p99_s`` <= the target in every variant,
``stall_p99_ms`` <= 5, ``guest_write_ratio`` >= 0.9.
"""

import collections
import logging
import os
import re
import signal
import threading
import time
import uuid

import psutil

import _common as c

from oslo_config import cfg

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.agent import service as agent_service
from ha_snapshot import conf as ha_conf
from ha_snapshot.db import migration
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import hmp
from ha_snapshot.hypervisor import process as hv_process
from ha_snapshot.manager import service as manager_service
from ha_snapshot import rpc

BLOCK = 64 * c.KiB
DISK = 1 * c.GiB
RPO_TARGET = 5.0
GOAL_STALL_MS = 5.0
GOAL_WRITE_RATIO = 0.9
SAMPLE_PERIOD = 0.1
POLICIES = ('adaptive', 'fixed')
# NOTE: 'none' is a VM with no agent at all, the same workload: the
# guest's write throughput without protection.
# name -> (data, policies side by side)
VARIANTS = {'random': ('random', POLICIES),
            'pattern': ('pattern', POLICIES),
            'random_solo': ('random', ('adaptive', 'none'))}


def make_conf(work: str, role: str, policy: str | None,
              min_interval: float, host_cpu=None,
              policy_opts=None, target: float = RPO_TARGET
              ) -> cfg.ConfigOpts:
    """The demo's configuration; one per service (own host, own policy)."""
    conf = cfg.ConfigOpts()
    ha_conf.register_opts(conf)
    conf([], project='ha-snapshot', default_config_files=[])
    overrides = {
        'storage': {'backend_url': 'file://' + os.path.join(work, 'store')},
        'database': {'connection': 'sqlite:///' + os.path.join(
            work, 'ha-snapshot.sqlite')},
        # NOTE: no Nova here: the notification listener would build its
        # own transport from [DEFAULT] transport_url.
        'manager': {'spool_dir': os.path.join(work, 'spool'),
                    'host': 'bench-manager', 'listen_notifications': False},
        'agent': {'state_dir': os.path.join(work, 'agent-' + role),
                  'host': 'bench-' + role},
        'qemu': {'overlay_dir': os.path.join(work, 'overlays-' + role)},
    }
    if policy == 'adaptive':
        overrides['policy'] = {'name': 'adaptive', 'rpo_target': target,
                               'min_interval': min_interval}
        if host_cpu:
            overrides['policy'].update({'host_cpu_high': host_cpu[0],
                                        'host_cpu_severe': host_cpu[1]})
        overrides['policy'].update(policy_opts or {})
    elif policy == 'fixed':
        overrides['policy'] = {'name': 'fixed', 'interval': target,
                               'rpo_target': target}
    for group, values in overrides.items():
        for name, value in values.items():
            conf.set_override(name, value, group=group)
    return conf


class Workload(threading.Thread):
    """Writes 64 KiB blocks into fresh slots at ``rate`` bytes/s."""

    MAX_BATCH = 16

    def __init__(self, driver, vm, disk, rate, kind, scratch):
        super().__init__(daemon=True, name='workload-%s' % vm.name)
        self.driver, self.vm, self.disk = driver, vm, disk
        self.period = BLOCK / rate
        self.kind, self.scratch = kind, scratch
        self.stopped = threading.Event()
        self.writes = 0      # blocks written
        self.commands = 0    # monitor commands (a late one holds several)
        self.latencies = []
        self.error = None
        self.started = self.ended = None
        self._mark = None  # (time, writes) when the sampling began

    def _write(self, offset, length):
        if self.kind == 'pattern':
            self.driver.write(self.vm, self.disk, offset, length,
                              1 + (offset // BLOCK) % 255)
            return
        fd = os.open(self.scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        try:
            os.pwrite(fd, c.random_bytes(length), 0)
        finally:
            os.close(fd)
        # NOTE: what driver.write does, with a data file instead of a
        # pattern (its command check refuses paths): the active node is
        # read under the graph lock, which snapshots also take.
        with self.vm.graph_lock:
            node = self.vm.disks[self.disk].active.node
            hmp.hmp(self.driver, self.vm, 'qemu-io %s "write -q -s %s %d %d"'
                    % (node, self.scratch, offset, length))

    def run(self):
        slots = DISK // BLOCK
        self.started = time.monotonic()
        try:
            while not self.stopped.is_set():
                due = self.started + (self.writes + 1) * self.period
                delay = due - time.monotonic()
                if delay > 0 and self.stopped.wait(delay):
                    break
                # NOTE: behind schedule (the monitor or this process is
                # busy), the blocks due are written in one command: the
                # slots are consecutive, so the bytes and offsets are the
                # same, and the rate holds.
                late = int((time.monotonic() - self.started) / self.period)
                n = max(1, min(late - self.writes, self.MAX_BATCH,
                               slots - self.writes % slots))
                t = time.monotonic()
                self._write((self.writes % slots) * BLOCK, n * BLOCK)
                self.latencies.append(time.monotonic() - t)
                self.writes += n
                self.commands += 1
        except Exception as e:  # the VM is gone: reported
            self.error = '%s: %s' % (type(e).__name__, e)
        self.ended = time.monotonic()

    def mark(self) -> None:
        """From now on :meth:`rate` and the latencies count."""
        self._mark = (time.monotonic(), self.writes, len(self.latencies))

    def rate(self) -> float:
        since, writes, _n = self._mark or (self.started, 0, 0)
        return (self.writes - writes) * BLOCK / max(1e-9, self.ended - since)

    def window_latencies(self) -> list:
        return self.latencies[self._mark[2] if self._mark else 0:]


class Sampler(threading.Thread):
    """Every 0.1 s: each VM's RPO; and every new restore point's times."""

    def __init__(self, agents: dict):
        super().__init__(daemon=True, name='rpo-sampler')
        self.agents = agents  # policy -> SnapshotAgent
        self.stopped = threading.Event()
        self.samples = collections.defaultdict(list)
        self.points = collections.defaultdict(list)  # (taken, durable)
        self._seen = {p: 0 for p in agents}

    def poll(self):
        now = time.time()
        for policy, sa in self.agents.items():
            # NOTE: the agent remembers its latest restore points only;
            # durable_count says how many of them are new since the last
            # poll (every 0.1 s: a few at most).
            with sa.durable:
                taken = [sa.taken_at.get(rp) for rp in sa.restore_points]
                count = sa.durable_count
            new = taken[len(taken) - min(count - self._seen[policy],
                                         len(taken)):]
            self._seen[policy] = count
            for t in new:
                if t is not None:
                    self.points[policy].append((t, now))
            if taken and taken[-1] is not None:
                self.samples[policy].append(now - taken[-1])

    def run(self):
        self.poll()
        while not self.stopped.wait(SAMPLE_PERIOD):
            self.poll()


class Decisions(logging.Handler):
    """The policy's decisions, from its INFO log line: (time, interval,
    reason, inputs); inputs holds the numeric ones of the line."""

    INPUT = re.compile(r'(\S+)=(-?[0-9.]+(?:e[+-]?[0-9]+)?)(?=\s|$)')

    def __init__(self):
        super().__init__(logging.INFO)
        self.by_instance = collections.defaultdict(list)

    def emit(self, record):
        args = record.args
        if isinstance(args, dict) and 'interval' in args:
            inputs = {k: float(v) for k, v in
                      self.INPUT.findall(str(args.get('inputs', '')))}
            self.by_instance[args.get('instance')].append(
                (time.time(), args['interval'], args.get('reason', ''),
                 inputs))


class Phases(logging.Handler):
    """One delta's life, phase by phase: the DEBUG timing lines of the
    shipper (inspect, parts, commit call, ack saved, block commit, state
    saved) and of the manager's commit (prestores, merge, retention,
    database), in milliseconds, per phase name."""

    PHASE = re.compile(r'([a-z][a-z +(),]*?) ([0-9.]+) ms')
    LOGGERS = ('ha_snapshot.agent.shipper', 'ha_snapshot.agent.committer',
               'ha_snapshot.manager.intake')

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.ms = collections.defaultdict(list)

    def install(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            logger.addHandler(self)

    def emit(self, record):
        if record.levelno != logging.DEBUG:
            return
        msg = record.getMessage()
        side = 'manager' if 'committed:' in msg else 'agent'
        for name, ms in self.PHASE.findall(msg.split(':', 1)[-1]):
            self.ms['%s: %s' % (side, name.strip(' ,'))].append(float(ms))

    def summary(self) -> dict:
        return {name: {'p50_ms': c.rnd(c.percentile(v, 50), 1),
                       'p90_ms': c.rnd(c.percentile(v, 90), 1),
                       'max_ms': c.rnd(max(v), 1), 'n': len(v)}
                for name, v in sorted(self.ms.items())}


class HostCpu:
    """CPU use over the sampling window: the whole host and ours (this
    process: manager, agents, workload; the VMs; the broker)."""

    def __init__(self, pids):
        self.procs = []
        for pid in pids:
            try:
                self.procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        self.t = time.monotonic()
        self.host = psutil.cpu_times()
        self.own = self._own()

    def _own(self) -> float:
        return c.cpu_of(self.procs)

    def done(self) -> dict:
        elapsed = time.monotonic() - self.t
        now = psutil.cpu_times()
        busy = c.host_busy(self.host, now)
        cpus = psutil.cpu_count() or 1
        return {'cpus': cpus,
                'host_cpu_percent': c.rnd(100 * busy / elapsed / cpus, 1),
                'ours_cpu_percent': c.rnd(
                    100 * (self._own() - self.own) / elapsed / cpus, 1),
                'loadavg_1m': c.rnd(os.getloadavg()[0], 2)}


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError('timed out after %.0f s waiting for %s'
                               % (timeout, what))
        time.sleep(0.05)


class Stalls:
    """The guest-visible stall of every snapshot: the QMP transaction
    (QEMU drains the guest's I/O for it), from the driver's
    ``Snapshot.transaction_seconds``; and the whole QMP time."""

    def __init__(self, driver):
        self.transaction, self.qmp = [], []
        take = driver.snapshot

        def snapshot(vm, **kwargs):
            snap = take(vm, **kwargs)
            self.transaction.append(snap.transaction_seconds)
            self.qmp.append(snap.qmp_seconds)
            return snap
        driver.snapshot = snapshot

    def summary(self) -> dict:
        if not self.transaction:
            return {}
        return {'stall_p50_ms': c.rnd(
                    c.percentile(self.transaction, 50) * 1000, 2),
                'stall_p99_ms': c.rnd(
                    c.percentile(self.transaction, 99) * 1000, 2),
                'stall_max_ms': c.rnd(max(self.transaction) * 1000, 2),
                'snapshot_qmp_p99_ms': c.rnd(
                    c.percentile(self.qmp, 99) * 1000, 2),
                'snapshots': len(self.transaction)}


def start_vm(work, driver, policy):
    spec = hv_process.bare_spec(work, 'rpo-%s' % policy, DISK)
    vm = driver.start(spec)
    return spec.disks[0].path, spec, vm, driver.disks(vm)[0].name


def run_variant(work, broker, kind, policies, seconds, rate, min_interval,
                decisions, host_cpu=None, policy_opts=None,
                target=RPO_TARGET) -> dict:
    os.makedirs(work)
    url = broker.transport_url
    mconf = make_conf(work, 'manager', None, min_interval)
    migration.upgrade(mconf)
    manager = manager_service.ManagerService(
        mconf, rpc.get_transport(mconf, url=url))
    manager.start()
    services, vms, started_vms, workloads = {}, {}, [], {}
    stalls = {}
    bare = None  # the unprotected VM: (driver, vm, node)
    try:
        for policy in policies:
            conf = make_conf(work, policy, policy, min_interval, host_cpu,
                             policy_opts, target)
            driver = hypervisor.get_driver(conf, 'qemu')
            if policy == 'none':
                bare = (driver,) + start_vm(work, driver, policy)[2:]
                started_vms.append(bare[1])
                continue
            stalls[policy] = Stalls(driver)
            svc = agent_service.AgentService(
                conf, rpc.get_transport(conf, url=url), driver)
            svc.start()
            services[policy] = svc
        for policy, svc in services.items():
            inst = str(uuid.uuid4())
            disk, spec, vm, node = start_vm(work, svc.driver, policy)
            started_vms.append(vm)
            svc.driver.detach(vm)  # NOTE: QMP serves one client
            manager.db.create_instance(inst, 'bench', host=svc.host,
                                       status='protecting', driver='qemu')
            agent_rpcapi.AgentAPI(manager.transport).protect(
                svc.host, inst, 'bench', {
                    'name': spec.name, 'qmp_path': spec.qmp_path,
                    'pid': vm.pid, 'log_path': spec.log_path, 'disk': node,
                    'disk_path': disk,
                    'vm': {'machine': 'none', 'node': node}})
            vms[policy] = (inst, node)
        agents = {}
        for policy, (inst, node) in vms.items():
            svc = services[policy]
            wait_for(lambda: (inst in svc.instances and
                              svc.instances[inst].agent.vm is not None),
                     60, 'the agent to attach to the %s VM' % policy)
            sa = svc.instances[inst].agent
            agents[policy] = sa
            # NOTE: the VM writes from the moment it can (QMP serves one
            # client: the agent's), like a busy server being protected.
            workloads[policy] = w = Workload(
                svc.driver, sa.vm, node, rate, kind,
                os.path.join(work, '%s.block' % policy))
            w.start()
        if bare is not None:
            workloads['none'] = Workload(
                bare[0], bare[1], bare[2], rate, kind,
                os.path.join(work, 'none.block'))
            workloads['none'].start()
        for policy, sa in agents.items():
            wait_for(lambda: sa.restore_points, 60,
                     'the baseline of the %s VM' % policy)
        c.log('%s: %d VM(s) protected and writing %.0f MiB/s each, '
              'baselines durable; sampling the RPO for %.0f s', kind,
              len(agents), rate / c.MiB, seconds)
        # NOTE: the write figures cover the sampling window only.
        for w in workloads.values():
            w.mark()
        host = HostCpu([os.getpid()] + [vm.pid for vm in started_vms]
                       + broker.pids())
        sampler = Sampler(agents)
        sampler.start()
        t_end = time.monotonic() + seconds
        next_log = time.monotonic() + 10
        while time.monotonic() < t_end:
            time.sleep(0.2)
            if time.monotonic() >= next_log:
                next_log += 10
                c.log('%s: %s', kind, ', '.join(
                    '%s rpo %.1f s (%d rps)' % (
                        p, sampler.samples[p][-1] if sampler.samples[p]
                        else -1, agents[p].durable_count)
                    for p in agents))
        sampler.stopped.set()
        sampler.join()
        cpu = host.done()
        for w in workloads.values():
            w.stopped.set()
        for w in workloads.values():
            w.join(30)
        out = {}
        for policy, sa in agents.items():
            out[policy] = summarize(policy, sa, sampler, workloads[policy],
                                    decisions.by_instance.get(sa.instance,
                                                              []))
            out[policy].update(stalls[policy].summary())
        if bare is not None:
            w = workloads['none']
            out['none'] = workload_figures(w)
            out['guest_write_ratio'] = c.rnd(
                workloads['adaptive'].rate() / max(1e-9, w.rate()), 3)
            out['guest_write_latency_ratio'] = c.rnd(
                mean(w.latencies) / max(1e-9, mean(
                    workloads['adaptive'].latencies)), 3)
        out['host'] = cpu
        return out
    finally:
        for w in workloads.values():
            w.stopped.set()
        for svc in services.values():
            svc.stop()
        manager.stop()
        for svc in services.values():
            for p in list(svc.instances.values()):
                if p.agent.vm is not None:
                    started_vms.append(p.agent.vm)
        for vm in started_vms:
            try:
                os.kill(vm.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def mean(values) -> float:
    return sum(values) / len(values) if values else 0.0


def workload_figures(workload) -> dict:
    lat = workload.window_latencies()
    return {
        'write_rate_mb_s': c.mb_per_s(int(workload.rate()), 1.0),
        'write_mean_ms': c.rnd(mean(lat) * 1000, 2),
        'write_p99_ms': c.rnd(c.percentile(lat, 99) * 1000, 2)
        if lat else None,
        'blocks_per_command': c.rnd(workload.writes
                                    / max(1, workload.commands), 2),
    }


def summarize(policy, sa, sampler, workload, decisions) -> dict:
    samples = sampler.samples[policy]
    points = sampler.points[policy]
    # NOTE: the first point seen is the baseline, durable before the
    # sampler started: its lag is unknown.
    taken = [t for t, _d in points]
    intervals = [b - a for a, b in zip(taken, taken[1:])]
    lags = [d - t for t, d in points[1:]]
    # NOTE: the reason without its figures (in parentheses) and its
    # consequence (after the colon).
    reasons = collections.Counter(
        re.sub(r' \([^)]*\)', '', r).split(':')[0].split(';')[0]
        for _t, _i, r, _in in decisions)
    chosen = [i for _t, i, _r, _in in decisions]

    def stats(values, prefix):
        if not values:
            return {}
        return {prefix + '_p50_s': c.rnd(c.percentile(values, 50), 3),
                prefix + '_max_s': c.rnd(max(values), 3)}

    out = {
        'rpo_p50_s': c.rnd(c.percentile(samples, 50), 3),
        'rpo_p99_s': c.rnd(c.percentile(samples, 99), 3),
        'rpo_max_s': c.rnd(max(samples), 3),
        'samples': len(samples),
        'restore_points': len(points) - 1,
        **workload_figures(workload),
        'shipped_bytes': sa.shipped_bytes,
        'changed_bytes': sa.shipped_changed_bytes,
        'decisions': dict(reasons),
    }
    out.update(stats(intervals, 'interval'))
    # NOTE: the host figures as the policy saw them (averaged over
    # [policy] host_window by the agent's sampler).
    for key, name in (('host_cpu_percent', 'policy_host_cpu'),
                      ('host_own_cpu_percent', 'policy_own_cpu')):
        seen = [i[key] for _t, _i, _r, i in decisions if key in i]
        if seen:
            out[name + '_p50_pct'] = c.rnd(c.percentile(seen, 50), 1)
    out.update(stats(lags, 'ship_lag'))
    if chosen:
        out['chosen_interval_min_s'] = c.rnd(min(chosen), 3)
        out['chosen_interval_max_s'] = c.rnd(max(chosen), 3)
    if workload.error:
        out['workload_error'] = workload.error
    if sa.error:
        out['agent_error'] = str(sa.error)
    return out


def main():
    def more(p):
        p.add_argument('--seconds', type=float, default=None,
                       help='Seconds of writes per variant (default 60, '
                            'quick 20).')
        p.add_argument('--rate-mib', type=float, default=10.0,
                       help='Write rate per VM, MiB/s (default 10).')
        p.add_argument('--min-interval', type=float, default=None,
                       help='[policy] min_interval of the adaptive run '
                            '(default 1, or the target / 4 below a 4 s '
                            'target).')
        p.add_argument('--rpo-target', type=float, default=RPO_TARGET,
                       help='[policy] rpo_target of the adaptive run and '
                            'the fixed baseline\'s interval (default '
                            '%(default)s); the goal is p99 <= it.')
        p.add_argument('--host-cpu', default=None, metavar='HIGH,SEVERE',
                       help='[policy] host_cpu_high,host_cpu_severe of the '
                            'adaptive run (default: the product defaults, '
                            '85,98).')
        p.add_argument('--policy-opt', action='append', default=[],
                       metavar='NAME=VALUE',
                       help='Another [policy] option of the adaptive run '
                            '(repeatable), e.g. host_window=0.')
        p.add_argument('--variants', default=None,
                       help='Comma-separated, of %s (default: all; quick: '
                            'random).' % ', '.join(VARIANTS))
    args = c.parse_args(__doc__, more)
    c.exit_on_sigterm()
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    variants = (args.variants.split(',') if args.variants
                else ['random'] if args.quick else list(VARIANTS))
    rate = args.rate_mib * c.MiB
    target = args.rpo_target
    min_interval = (args.min_interval if args.min_interval is not None
                    else min(1.0, target / 4))
    host_cpu = ([float(x) for x in args.host_cpu.split(',')]
                if args.host_cpu else None)
    policy_opts = {}
    for opt in args.policy_opt:
        name, sep, value = opt.partition('=')
        if not sep:
            raise SystemExit('--policy-opt %r: expected NAME=VALUE' % opt)
        policy_opts[name.strip()] = float(value)
    results = {}
    with c.workdir(args, 'rpo') as wd:
        logging.basicConfig(
            filename=os.path.join(wd, 'bench.log'), level=logging.INFO,
            format='%(asctime)s %(levelname)s %(name)s %(message)s')
        logging.getLogger('oslo_utils.imageutils.format_inspector').setLevel(
            logging.ERROR)
        decisions = Decisions()
        logging.getLogger('ha_snapshot.policy.base').addHandler(decisions)
        phases = Phases()
        phases.install()
        with c.rabbitmq(wd) as broker:
            for name in variants:
                kind, policies = VARIANTS[name]
                results[name] = run_variant(
                    os.path.join(wd, name), broker, kind, policies,
                    seconds, rate, min_interval, decisions,
                    host_cpu, policy_opts, target)
                results[name]['phases'] = phases.summary()
                phases.ms.clear()
                for policy in policies:
                    if policy == 'none':
                        continue
                    r = results[name][policy]
                    c.log('%s/%s: rpo p50 %.2f s, p99 %.2f s, max %.2f s; '
                          '%d restore points, interval p50 %s s, ship lag '
                          'p50 %s s max %s s; writes %.1f MiB/s', name,
                          policy, r['rpo_p50_s'], r['rpo_p99_s'],
                          r['rpo_max_s'], r['restore_points'],
                          r.get('interval_p50_s'), r.get('ship_lag_p50_s'),
                          r.get('ship_lag_max_s'), r['write_rate_mb_s'])
        warnings = _warnings(os.path.join(wd, 'bench.log'))
    head = results.get('random') or results[variants[0]]
    result = {
        'benchmark': 'rpo_under_load', 'quick': args.quick,
        'seconds': seconds, 'write_rate_target_mib_s': args.rate_mib,
        'rpo_target_s': target,
        'adaptive_min_interval_s': min_interval,
        'adaptive_host_cpu_high_severe': host_cpu or 'defaults (85, 98)',
        'adaptive_policy_opts': policy_opts,
        'headline_variant': ('random' if 'random' in results
                             else variants[0]),
        'rpo_p50_s': head['adaptive']['rpo_p50_s'],
        'rpo_p99_s': head['adaptive']['rpo_p99_s'],
        'rpo_max_s': head['adaptive']['rpo_max_s'],
        'stall_p99_ms': head['adaptive'].get('stall_p99_ms'),
        'baseline': {k: head['fixed'][k]
                     for k in ('rpo_p50_s', 'rpo_p99_s', 'rpo_max_s',
                               'stall_p99_ms')
                     if 'fixed' in head},
        'rpo_p99_s_by_variant': {
            name: r['adaptive']['rpo_p99_s'] for name, r in results.items()},
        'guest_write_ratio': next(
            (r['guest_write_ratio'] for r in results.values()
             if 'guest_write_ratio' in r), None),
        'variants': results,
        'log_warnings': warnings,
        'definition': 'RPO sample (every 0.1 s) = now - taken_at of the '
                      'newest durable restore point; nearest-rank '
                      'percentiles over the write phase; adaptive: '
                      'rpo_target %g s; baseline: fixed interval %g s, same '
                      'run, side by side; stall = the snapshot\'s QMP '
                      'transaction (guest I/O drained); guest_write_ratio = '
                      'the adaptive VM\'s achieved write rate over an '
                      'unprotected VM\'s, same workload side by side '
                      '(random_solo)' % (target, target),
        'goal': 'rpo_p99_s <= %g in every variant, stall_p99_ms <= %g, '
                'guest_write_ratio >= %g' % (target, GOAL_STALL_MS,
                                             GOAL_WRITE_RATIO),
    }
    result['goal_met'] = (
        all(v <= target for v in result['rpo_p99_s_by_variant'].values())
        and (result['stall_p99_ms'] or 0) <= GOAL_STALL_MS
        and (result['guest_write_ratio'] is None
             or result['guest_write_ratio'] >= GOAL_WRITE_RATIO))
    c.emit(result)


def _warnings(path) -> list:
    """The first WARNING/ERROR lines of the services' log, shortened."""
    out = []
    try:
        with open(path, errors='replace') as f:
            for line in f:
                if ' WARNING ' in line or ' ERROR ' in line:
                    out.append(line.strip()[:300])
    except OSError:
        pass
    if out:
        c.log('%d warnings in the log, first: %s', len(out), out[0])
    return out[:5]


if __name__ == '__main__':
    os.environ.setdefault('LC_ALL', 'C')
    main()
