"""Several manager replicas, one SIGKILLed while agents ship: takeover
time, RPO during the failover, and nothing lost or merged twice.

The real daemons in their own processes over a private RabbitMQ broker and
a private PostgreSQL server (fsync on): ``--managers`` replicas of
``ha_snapshot.cmd.manager`` (default 3; each its own ``[manager] host`` and
spool; ``[manager_cluster] heartbeat_interval`` 2 s, ``dead_after_missed``
3, so a replica is dead 6 s after its last beat) and one
``ha_snapshot.cmd.agent`` (``[agent] rpc_timeout`` 10 s) protecting
``--instances`` QEMU VMs (default 20, quick 10; ``-machine none``) on the
``fixed`` policy at ``--interval`` (1 s). Retention keeps every restore
point of the run, so that each acknowledged one can be looked for.

Once every VM has its baseline and ``--warm`` seconds (20, quick 10) have
passed, a replica dies during a recovery: ``--recoveries`` VMs (3) have
their QEMU SIGKILLed; the agent reports each (``report_health`` calls,
which the replicas take in turn) and a ``restart`` recovery runs on the
replica that took the report. The first replica seen at the step where it
asks the agent for the restart, once the agent is at work on that restart
(it writes the restore point it fetches), is SIGKILLed right then. If
none is seen there, another round of VMs is killed once the recoveries
ended; in the last of 3 rounds any step will do; without any, the
replica that owns the most instances is killed. The recovery it was
running is taken over by the instance's owner (the ring over the live
replicas, as the replicas compute it) once its lease (10 s) has expired,
and resumed at its recorded step: benchmarks/_recoveries.py.

For each instance the killed replica owned, ``takeover_seconds``: from its
SIGKILL to the first new restore point of that instance in the database
(made by another replica). Every 0.25 s the age of each instance's newest
restore point is sampled: ``rpo_seconds_max`` is the largest seen from the
kill on, ``rpo_seconds_max_before`` before it. The VMs killed are left out
of both (their figure is ``recovery_seconds``). ``--after`` seconds (30,
quick 20) after the kill and once every recovery ended, the killed replica
is started again (its instances come back to it) and the run goes on for
``--after`` more seconds; then everything stops and is checked:

* ``restore_points_lost``: restore points the agent logged as durable
  (acknowledged) that are not in the database or not in the store;
* ``database_store_mismatches``: instances whose restore points (id,
  number, delta) differ between the database and the store, or whose
  numbers are not 1..n;
* ``duplicate_merges``: deltas (instance, sequence) that more than one
  merge made (the store's "restore point ... from delta" log lines of all
  replicas);
* ``deltas_acknowledged`` and ``merges_per_replica``;
* ``recoveries`` (rows in the database for the VMs killed),
  ``recoveries_succeeded``, ``recoveries_in_flight_at_kill`` (started by
  the killed replica and not ended when it died), ``recoveries_taken_over``
  (started by one replica, ended by another: the logs), and
  ``recovery_seconds`` p50/max (from a VM's SIGKILL to its recovery's
  ``finished_at``);
* ``duplicate_recoveries``: restarts beyond the first of one recovery id
  (the agent logs each restart with its recovery), plus recoveries beyond
  the first of one killed VM; ``recoveries_without_restart`` (succeeded,
  no restart logged), ``restarts_refused_as_repeats`` (a taken-over
  recovery asking again for a restart the agent had made: answered, not
  repeated), ``vms_running_twice`` and ``vms_not_running`` (QEMU processes
  per QMP socket at the end: one each).

Goal (issue 12): ``takeover_seconds`` p99 <= 30 s, nothing lost or merged
twice, each recovery's action run exactly once. Every process started here
is stopped by its pid (the VMs the agent started again by their QMP
socket path).
"""

import collections
import os
import re
import sys
import time

import psutil

import _common as c
import _recoveries
import scale
import soak

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.db import api as db_api
from ha_snapshot.db import engine as db_engine
from ha_snapshot import hypervisor
from ha_snapshot.manager import membership
from ha_snapshot import rpc
from ha_snapshot.storage import store as store_mod

GOAL_TAKEOVER_P99 = 30.0
CLUSTER = ('\n[manager_cluster]\nheartbeat_interval = 2\n'
           'dead_after_missed = 3\nlease_duration = 10\n'
           '[retention]\nkeep_last = 100000\nage_tiers =\n'
           '[agent]\nrpc_timeout = 10\n')
MERGE = re.compile(r'Instance ([0-9a-f-]{36}): restore point \S+ \(#\d+\) '
                   r'from delta (\d+):')
ACKED = re.compile(r'Instance ([0-9a-f-]{36}): delta \d+ durable as '
                   r'([0-9a-f-]{36})')


def owners(hosts, instances, partitions=32) -> dict:
    ring = membership.build_ring(hosts, partitions)
    return {i: membership.ring_owner(ring, i) for i in instances}


def newest(db) -> dict:
    """instance -> (last_sequence, newest restore point time, epoch)."""
    return {r.uuid: (r.last_sequence or 0,
                     db_engine.to_timestamp(r.newest_restore_point_at)
                     if r.newest_restore_point_at else None)
            for r in db.list_instances(host=scale.AGENT_HOST)}


def check(db, store, logs, agent_log) -> dict:
    merges = collections.Counter()
    by_replica = collections.Counter()
    for name, path in logs.items():
        with open(path, errors='replace') as f:
            for m in MERGE.finditer(f.read()):
                merges[(m.group(1), int(m.group(2)))] += 1
                by_replica[name] += 1
    with open(agent_log, errors='replace') as f:
        acked = [(m.group(1), m.group(2)) for m in ACKED.finditer(f.read())]
    mismatches, lost = [], []
    for row in db.list_instances(host=scale.AGENT_HOST):
        rows = [(r.id, r.number, r.delta_sequence)
                for r in db.list_restore_points(row.uuid)]
        stored = [(m.id, m.number, m.delta_sequence)
                  for m in store.restore_points(row.uuid)]
        if rows != stored or [n for _i, n, _s in rows] != list(
                range(1, len(rows) + 1)):
            mismatches.append(row.uuid)
        known = {i for i, _n, _s in rows} & {i for i, _n, _s in stored}
        lost += [rp for inst, rp in acked if inst == row.uuid
                 and rp not in known]
    return {'deltas_acknowledged': len(acked),
            'restore_points_lost': len(set(lost)),
            'database_store_mismatches': len(mismatches),
            'duplicate_merges': sum(1 for n in merges.values() if n > 1),
            'merges_per_replica': dict(sorted(by_replica.items()))}


def main():
    def more(p):
        p.add_argument('--managers', type=int, default=3)
        p.add_argument('--instances', type=int, default=None)
        p.add_argument('--interval', type=float, default=1.0)
        p.add_argument('--warm', type=float, default=None)
        p.add_argument('--after', type=float, default=None)
        p.add_argument('--recoveries', type=int, default=3,
                       help='VMs killed per round at the failover '
                            '(default %(default)s).')
    args = c.parse_args(__doc__, more)
    c.exit_on_sigterm()
    n = args.instances or (10 if args.quick else 20)
    warm = args.warm or (10.0 if args.quick else 20.0)
    after = args.after or (20.0 if args.quick else 30.0)
    vms, daemons = [], []
    with c.workdir(args, 'failover') as wd, c.rabbitmq(wd) as broker, \
            soak.PostgreSQL() as pg:
        os.makedirs(os.path.join(wd, 'vms'))
        hosts = ['replica-%d' % i for i in range(1, args.managers + 1)]
        configs = {}
        for host in hosts:
            os.makedirs(os.path.join(wd, 'spool-' + host))
            configs[host] = scale.write_config(
                os.path.join(wd, host + '.conf'), wd, broker.transport_url,
                args.interval, connection=pg.url, manager=host,
                spool='spool-' + host, extra=CLUSTER)
        agent_config = configs[hosts[0]]
        c.run(sys.executable, '-m', 'ha_snapshot.cmd.manage',
              '--config-file', agent_config, 'db', 'sync')
        conf = scale.load_conf(agent_config)
        transport = rpc.get_transport(conf)
        db = db_api.Database(conf)
        store = store_mod.RecoveryStore.from_conf(conf)
        driver = hypervisor.get_driver(conf, 'qemu')
        logs = {h: os.path.join(wd, h + '.log') for h in hosts}
        replicas = {}

        def start(host):
            d = scale.Daemon('ha_snapshot.cmd.manager', configs[host],
                             logs[host], 'ha-snapshot-manager started')
            d.name = host
            replicas[host] = d
            daemons.append(d)
            return d
        try:
            for host in hosts:
                start(host)
            for host in hosts:
                replicas[host].wait_ready(300)
            agent = scale.Daemon('ha_snapshot.cmd.agent', agent_config,
                                 os.path.join(wd, 'agent.log'),
                                 'ha-snapshot-agent started')
            daemons.append(agent)
            agent.wait_ready(300)
            api = agent_rpcapi.AgentAPI(transport,
                                        signer=c.manager_signer(conf))
            instances = scale.protect_vms(driver, wd, n, 25, vms, db, api)
            scale.wait_for_baselines(db, n, agent)
            c.log('%d baselines durable over %d replicas; %.0f s warm-up',
                  n, len(hosts), warm)
            rpo_before, rpo_after = [], []

            killed = {}

            def sample(into, seconds, watch=None):
                """RPO samples for ``seconds``; with ``watch`` ({inst:
                seq at the kill}), the first new restore point of each."""
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    now = time.time()
                    for inst, (seq, at) in newest(db).items():
                        if inst in killed:
                            continue
                        if at is not None:
                            into.append(now - at)
                        if watch and inst in watch and seq > watch[inst][0] \
                                and watch[inst][1] is None:
                            watch[inst][1] = time.monotonic()
                    time.sleep(0.25)
            sample(rpo_before, warm)
            owned = owners(hosts, list(instances))
            seq_at_kill = {}
            failover = _recoveries.kill_during_recovery(
                db, dict(replicas), instances, args.recoveries, 3, 60,
                before_kill=lambda: seq_at_kill.update(newest(db)),
                busy=_recoveries.restarting(os.path.join(wd, 'agent')))
            killed.update(failover['killed'])
            victim = failover['victim']
            if victim is None:
                counts = collections.Counter(owned.values())
                victim = max(hosts, key=lambda h: counts[h])
                c.log('no recovery seen running: SIGKILL %s (owner of the '
                      'most instances)', victim)
                seq_at_kill.update(newest(db))
                replicas[victim].proc.kill()
                failover['killed_at'] = time.monotonic()
                replicas[victim].proc.wait()
            orphans = [i for i, h in owned.items()
                       if h == victim and i not in killed]
            watch = {i: [seq_at_kill[i][0], None] for i in orphans}
            c.log('SIGKILLed %s: %d orphans, %d VMs killed, %d recoveries '
                  'in flight on it', victim, len(orphans), len(killed),
                  len(failover['in_flight']))
            sample(rpo_after, after, watch)
            takeover = [t - failover['killed_at']
                        for _s, t in watch.values() if t is not None]
            c.log('taken over: %d of %d orphans, p99 %.1f s',
                  len(takeover), len(orphans),
                  c.percentile(takeover, 99) if takeover else -1)
            unended = _recoveries.wait_ended(db, killed, 120)
            c.log('recoveries ended (%d not)', len(unended))
            start(victim).wait_ready(300)
            c.log('%s started again; %.0f s more', victim, after)
            sample(rpo_after, after)
            qemus = _recoveries.qemu_count(
                {i: vm.qmp_path for i, vm in instances.items()})
            result = {
                'managers': len(hosts), 'instances': n,
                'interval_s': args.interval, 'killed_replica': victim,
                'orphaned_instances': len(orphans),
                'orphans_taken_over': len(takeover),
                'takeover_seconds_p50': c.rnd(c.percentile(takeover, 50), 2)
                if takeover else None,
                'takeover_seconds_p99': c.rnd(c.percentile(takeover, 99), 2)
                if takeover else None,
                'goal_takeover_p99_s': GOAL_TAKEOVER_P99,
                'rpo_seconds_max_before': c.rnd(max(rpo_before), 2),
                'rpo_seconds_max': c.rnd(max(rpo_after), 2),
                'recovery_rounds': failover['rounds'],
                'recovery_steps_at_kill': failover['steps_at_kill'],
                'recoveries_not_ended': len(unended),
                'loadavg_1m': c.rnd(os.getloadavg()[0], 2),
                'host_cpus': psutil.cpu_count(),
            }
        finally:
            scale.stop_all(daemons, vms)
            _recoveries.kill_restarted([vm.qmp_path for _n, _s, vm, _d in vms],
                                       {vm.pid for _n, _s, vm, _d in vms})
            transport.cleanup()
        result.update(check(db, store, logs, os.path.join(wd, 'agent.log')))
        result.update(_recoveries.check(
            db, logs, os.path.join(wd, 'agent.log'), killed,
            failover['in_flight'], qemus))
        db.dispose()
        result['goal_met'] = bool(
            result['takeover_seconds_p99'] is not None
            and result['orphans_taken_over'] == result['orphaned_instances']
            and result['takeover_seconds_p99'] <= GOAL_TAKEOVER_P99
            and result['restore_points_lost'] == 0
            and result['duplicate_merges'] == 0
            and result['database_store_mismatches'] == 0
            and result['duplicate_recoveries'] == 0
            and result['recoveries_in_flight_at_kill'] > 0
            and result['recoveries_taken_over'] > 0
            and result['recoveries'] == result['vms_killed']
            and result['recoveries_succeeded'] == result['recoveries']
            and result['recoveries_without_restart'] == 0
            and result['vms_running_twice'] == 0
            and result['vms_not_running'] == 0)
        result['what'] = ('%d manager replicas on PostgreSQL, %d VMs at %.0f '
                          's; %d VMs killed, a replica SIGKILLed while it '
                          'ran a recovery, restarted once the recoveries '
                          'ended' % (len(hosts), n, args.interval,
                                                len(killed)))
        c.emit(result)


if __name__ == '__main__':
    main()
