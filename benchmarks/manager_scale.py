"""Three manager replicas serving 600 instances at 10 s cycles: the CPU
and memory of each replica (issue 12's scale figure).

What is real: ``--replicas`` (3) ``python -m ha_snapshot.cmd.manager``
processes, each its own ``[manager] host`` and spool, sharing a private
PostgreSQL server (fsync on), a private RabbitMQ broker and a file store
on this disk; membership, the hash ring, leases and signed messages
(``[rpc_auth]`` master key) as configured by default (heartbeat 10 s,
leases 60 s, the project's retention). Nothing of the managers is
simulated.

What is simulated: the agents. A real QEMU per instance does not fit
(about 40 MiB each: 600 VMs are 24 GiB), so this process plays
``--hosts`` (20, quick 3) compute hosts' agents over the real bus. Each of
``--instances`` (600, quick 15) instances is recorded in the database on
its host (as the Nova hook does), then registered with
``register_instance`` through the project's own manager client
(ha_snapshot.manager.rpcapi.ManagerAPI, signed with the host's identity;
it routes each delta to the owning replica and learns the owner from the
answers, a WrongOwner refusal or a timeout, as the agent does). Every
``--interval`` (10 s) after its previous delta started, each instance
ships one delta: ``--delta-kib`` (64) KiB of log-like text (zstd shrinks
it about 3x; ``--data random``: incompressible) in 64 KiB clusters at
random offsets of a 1 GiB disk, made into parts the way the agent makes
them (extents, zstd when it pays, sha256), sent with ``put_part`` and then
``commit_delta``, which answers once the restore point is durable. The
first delta of each is a full baseline of the same size. ``--delta-kib
0`` ships what an idle VM ships: a delta without parts. No QEMU, no
qemu-img, no snapshot: the managers get what a real agent sends for a VM
that wrote that much. An error (a timeout, WrongOwner, a refusal) is
counted by type and the delta sent again after 1 s, from its first part
(benchmarks/_sim_agents.py).

First the replicas idle with no instance: CPU over ``--idle`` seconds
(20, quick 4) and RSS at its end (``idle`` per replica). Instances are
spread evenly over the interval. After every baseline is durable and
``--warm`` seconds (30, quick 5) have passed, the window (``--window``:
180 s, quick 20 s): the CPU seconds of each replica (psutil
``cpu_times``, user + system, children included) over it, and its RSS at
its end. Keys: ``replicas`` (per replica: ``cpu_cores`` = CPU seconds /
window seconds, 1.0 is one core busy; ``rss_mb``; ``owned``, its
instances on the ring of the live replicas; ``merges``, restore points it
made in the window, from its log; ``cores_per_200_instances`` on what it
owns; ``idle_cpu_cores``, ``idle_rss_mb``), ``total_cpu_cores``,
``cores_per_200_instances`` (the total over ``instances``/200; goal <=
0.25: replicas add up), ``cpu_ms_per_delta`` (the total CPU above idle
per delta made durable),
``deltas_per_s_achieved`` (restore points made durable in the window, from
the database, per second) against ``deltas_per_s_expected``
(instances / interval), ``sim_errors`` (by type), the managers'
``log_errors`` and ``log_warnings``, and the CPU of the broker,
PostgreSQL, this process (the simulated agents) and the whole host over
the window, with the load average: the CPU time of a process is its own,
but a machine busy with other work slows everything down. Every process
started here is stopped by its pid.
"""

import collections
import os
import sys
import time

import psutil

import _common as c
import _recoveries
import _sim_agents
import manager_failover
import scale
import soak

from ha_snapshot.db import api as db_api
from ha_snapshot import rpc

GOAL_CORES_PER_200 = 0.25


def durable(db, hosts) -> int:
    return sum(r.last_sequence or 0 for h in hosts
               for r in db.list_instances(host=h))


def count_merges(tails) -> dict:
    return {name: len(manager_failover.MERGE.findall(t.read()))
            for name, t in tails.items()}


def main():
    def more(p):
        p.add_argument('--replicas', type=int, default=3)
        p.add_argument('--instances', type=int, default=None,
                       help='Instances (default 600, quick 15).')
        p.add_argument('--hosts', type=int, default=None,
                       help='Simulated compute hosts (default 20, quick '
                            '3).')
        p.add_argument('--interval', type=float, default=10.0)
        p.add_argument('--delta-kib', type=int, default=64,
                       help='KiB changed per delta, a multiple of 64 '
                            '(default %(default)s; 0: empty deltas).')
        p.add_argument('--data', choices=('text', 'random'), default='text')
        p.add_argument('--idle', type=float, default=None)
        p.add_argument('--warm', type=float, default=None)
        p.add_argument('--window', type=float, default=None)
        p.add_argument('--workers', type=int, default=64,
                       help='Deltas the simulated agents ship at once.')
    args = c.parse_args(__doc__, more)
    c.exit_on_sigterm()
    if args.delta_kib % 64 or args.delta_kib < 0:
        raise SystemExit('--delta-kib must be a multiple of 64, not %d'
                         % args.delta_kib)
    n = args.instances or (15 if args.quick else 600)
    nhosts = args.hosts or (3 if args.quick else 20)
    warm = args.warm if args.warm is not None else (5.0 if args.quick
                                                    else 30.0)
    seconds = args.window or (20.0 if args.quick else 180.0)
    idle_seconds = args.idle or (4.0 if args.quick else 20.0)
    daemons = []
    with c.workdir(args, 'mscale') as wd, c.rabbitmq(wd) as broker, \
            soak.PostgreSQL() as pg:
        hosts = ['replica-%d' % i for i in range(1, args.replicas + 1)]
        configs = {}
        for host in hosts:
            os.makedirs(os.path.join(wd, 'spool-' + host))
            configs[host] = scale.write_config(
                os.path.join(wd, host + '.conf'), wd, broker.transport_url,
                args.interval, connection=pg.url, manager=host,
                spool='spool-' + host)
        c.run(sys.executable, '-m', 'ha_snapshot.cmd.manage',
              '--config-file', configs[hosts[0]], 'db', 'sync')
        conf = scale.load_conf(configs[hosts[0]])
        transport = rpc.get_transport(conf)
        db = db_api.Database(conf)
        logs = {h: os.path.join(wd, h + '.log') for h in hosts}
        sim = _sim_agents.SimAgents(
            conf, transport, nhosts, n, args.interval, args.delta_kib,
            args.data, args.workers, args.seed)
        try:
            for host in hosts:
                d = scale.Daemon('ha_snapshot.cmd.manager', configs[host],
                                 logs[host], 'ha-snapshot-manager started')
                d.name = host
                daemons.append(d)
            for d in daemons:
                d.wait_ready(300)
            c.log('%d replicas started; idle window of %.0f s',
                  len(daemons), idle_seconds)
            idle = scale.window(idle_seconds, daemons, {})
            t = time.monotonic()
            sim.record(db)
            sim.run_all(sim.register, 16)
            c.log('%d instances on %d hosts registered in %.1f s', n,
                  nhosts, time.monotonic() - t)
            sim.run_all(sim.ship, min(args.workers, n))
            c.log('%d baselines durable %.1f s after the first '
                  'registration; the schedule starts, warm-up %.0f s', n,
                  time.monotonic() - t, warm)
            sim.start()
            time.sleep(warm)
            for d in daemons:
                if d.proc.poll() is not None:
                    raise RuntimeError('%s exited: %s' % (d.name, d.tail()))
            owned = collections.Counter(manager_failover.owners(
                hosts, [i.uuid for i in sim.instances]).values())
            tails = {h: _recoveries.LogTail(logs[h]) for h in hosts}
            others = {'broker': [psutil.Process(p) for p in broker.pids()],
                      'postgresql': _pg_procs(pg),
                      'sim_agents': [psutil.Process()]}
            seq0 = durable(db, sim.apis)
            errors0 = sum(sim.errors.values())
            c.log('window of %.0f s', seconds)
            busy = scale.window(seconds, daemons, others)
            seq1 = durable(db, sim.apis)
            merges = count_merges(tails)
            errors_in_window = sum(sim.errors.values()) - errors0
        finally:
            sim.stop()
            scale.stop_all(daemons, [])
            db.dispose()
            transport.cleanup()
        log_errors = sum(scale._count(p, ' ERROR ') for p in logs.values())
        log_warnings = sum(scale._count(p, ' WARNING ')
                           for p in logs.values())
        problems = [x for p in logs.values()
                    for x in scale._first(p, (' ERROR ', ' WARNING '), 2)]

    window = busy['seconds']
    per = {}
    for h in hosts:
        cores = busy[h + '_cpu_fraction']
        per[h] = {'cpu_cores': cores, 'rss_mb': busy[h + '_rss_mb'],
                  'threads': busy[h + '_threads'], 'owned': owned[h],
                  'merges': merges[h],
                  'idle_cpu_cores': idle[h + '_cpu_fraction'],
                  'idle_rss_mb': idle[h + '_rss_mb'],
                  'cores_per_200_instances': c.rnd(
                      cores * 200 / owned[h], 4) if owned[h] else None}
    total = sum(p['cpu_cores'] for p in per.values())
    idle_total = sum(p['idle_cpu_cores'] for p in per.values())
    achieved = (seq1 - seq0) / window
    expected = n / args.interval
    result = {
        'benchmark': 'manager_scale', 'quick': args.quick,
        'managers': len(hosts), 'instances': n, 'hosts': nhosts,
        'interval_s': args.interval, 'delta_kib': args.delta_kib,
        'data': args.data, 'window_s': window, 'replicas': per,
        'total_cpu_cores': c.rnd(total, 4),
        'total_rss_mb': c.rnd(sum(p['rss_mb'] for p in per.values()), 1),
        'cores_per_200_instances': c.rnd(total * 200 / n, 4),
        'idle_total_cpu_cores': c.rnd(idle_total, 4),
        'cpu_ms_per_delta': c.rnd((total - idle_total) * window * 1000
                                  / max(1, seq1 - seq0), 2),
        'goal_cores_per_200_instances': GOAL_CORES_PER_200,
        'deltas_per_s_achieved': c.rnd(achieved, 3),
        'deltas_per_s_expected': c.rnd(expected, 3),
        'achieved_ratio': c.rnd(achieved / expected, 3),
        'deltas_acknowledged': sim.acked,
        'sim_errors': dict(sim.errors), 'sim_errors_in_window':
        errors_in_window, 'sim_first_errors': sim.first_errors,
        'log_errors': log_errors, 'log_warnings': log_warnings,
        'log_first_problems': problems[:6],
        'broker_cpu_cores': busy['broker_cpu_fraction'],
        'postgresql_cpu_cores': busy['postgresql_cpu_fraction'],
        'sim_agents_cpu_cores': busy['sim_agents_cpu_fraction'],
        'host_cpu_cores': busy['host_cpu_fraction'],
        'host_cpus': busy['host_cpus'], 'loadavg_1m': busy['loadavg_1m'],
        'definition': 'cpu_cores = CPU seconds of the process (user + '
                      'system, waited-for children included) / window '
                      'seconds; cores_per_200_instances = total_cpu_cores '
                      'x 200 / instances; deltas_per_s_achieved = restore '
                      'points made durable in the window / window seconds',
    }
    result['goal_met'] = bool(
        result['cores_per_200_instances'] <= GOAL_CORES_PER_200
        and result['achieved_ratio'] >= 0.95 and log_errors == 0)
    c.emit(result)


def _pg_procs(pg) -> list:
    """The PostgreSQL server's processes (postmaster and its backends,
    as they are now: one per pooled connection, long-lived here)."""
    root = psutil.Process(pg.cluster.proc.pid)
    return [root] + root.children(recursive=True)


if __name__ == '__main__':
    os.environ.setdefault('LC_ALL', 'C')
    main()
