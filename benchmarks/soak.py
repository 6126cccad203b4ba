"""Hours of deltas in minutes: memory growth per delta and database hold-up.

The real daemons, each in its own process, over a private RabbitMQ broker,
as in ``scale.py`` (whose daemon and VM helpers it uses): ``python -m
ha_snapshot.cmd.manager`` and ``python -m ha_snapshot.cmd.agent``, file
store, policy ``fixed``. This process starts ``--instances`` QEMU VMs
(default 20, ``-machine none``, a 64 MiB qcow2 disk each, writing nothing),
protects them, waits for every baseline and then lets the pair run until
``--deltas`` more deltas (default 20,000; quick 600) are durable, at
``--interval`` (default 1 s): 20 VMs at 1 s are 20 deltas/s, the load the
project advertises for one manager (200 servers on a 10 s cycle).

Retention keeps the newest 24 restore points of each instance and no age
tiers (``--age-tiers``): what the manager knows of each restore point it
keeps (a database row, a manifest summary) is memory by design, and the
project's default tiers keep every restore point of the last hour
(72,000 of them at 20 deltas/s), which a run of minutes would count as
growth. With 24 kept, the kept set is full after 480 deltas, well inside
the warm-up, so what grows after it is what nothing ever trims. The
daemons run with the ``[malloc]`` defaults (two malloc arenas, freed
memory trimmed every 60 s): figures, and how the growth was found, in
doc/source/admin/database.rst ("Memory over days").

The database is ``--database sqlite`` (the embedded default: a file in the
work directory, made by ``ha-snapshot-manage db sync``) or ``postgresql``
(a private server started like the test fixture's, with fsync and
synchronous commits on, as in production).

Every ``--sample`` seconds: RSS of the manager and of the agent, and the
deltas made durable so far (from the database). Keys:
``manager_kb_per_1000_deltas`` and ``agent_kb_per_1000_deltas``: the slope
of a least-squares line of RSS against durable deltas over the samples
after warm-up (the first ``--warmup`` fraction of the deltas, default 0.2),
in KiB per 1,000 deltas; RSS at the start and end of that window and its
maximum; ``deltas_durable`` / ``deltas_expected`` (instances x window
seconds / interval; ``durable_ratio``), ``log_errors`` and
``log_warnings`` of both daemons (and ``database_locked``: lines naming
"database is locked"), the first problems, and the 1-minute load average
seen (mean and maximum) on this shared machine, with the CPU of each
daemon (its waited-for children included) and of the whole host over the
run (1.0 = one core busy). The run's baseline is its
own start: the RSS after warm-up, in the same run. Every process started
here is stopped by its pid.
"""

import os
import sys
import time

import psutil

import _common as c
import scale

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.db import api as db_api
from ha_snapshot import hypervisor
from ha_snapshot import rpc

AGENT_HOST = scale.AGENT_HOST


def write_config(path, work, url, connection, interval, tiers):
    # NOTE: scale.py's config, with the database and retention of the run.
    return scale.write_config(
        path, work, url, interval, connection=connection,
        manager='soak-manager',
        extra='\n[retention]\nkeep_last = 24\nage_tiers = %s\n' % tiers)


class PostgreSQL:
    """A private PostgreSQL server for the run (the test fixture's
    cluster), durable settings; ``url`` of a fresh database."""

    def __init__(self):
        from ha_snapshot.tests.fixtures import database as pg
        self.cluster = pg.Cluster(settings={
            'fsync': 'on', 'synchronous_commit': 'on',
            'full_page_writes': 'on'})

    def __enter__(self):
        t = time.monotonic()
        self.cluster.start()
        self.url = self.cluster.create_database('ha_snapshot_soak')
        c.log('PostgreSQL up on port %d in %.1f s', self.cluster.port,
              time.monotonic() - t)
        return self

    def __exit__(self, *exc):
        self.cluster.stop()


class NoServer:
    url = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def slope(points) -> float | None:
    """Least-squares slope of [(x, y)], or None with fewer than 2 x."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def durable_total(db, seq0) -> int:
    rows = db.list_instances(host=AGENT_HOST)
    return sum((r.last_sequence or 0) - seq0.get(r.uuid, 0) for r in rows)


def growth(samples, key, warm) -> dict:
    """RSS figures of one daemon over the samples after warm-up."""
    after = [s for s in samples if s['deltas'] >= warm]
    points = [(s['deltas'], s[key]) for s in after]
    per_delta = slope(points)
    name = key.split('_')[0]
    return {
        name + '_kb_per_1000_deltas': (
            None if per_delta is None else c.rnd(per_delta * 1000 / 1024,
                                                 1)),
        name + '_rss_mb_after_warmup': (
            c.rnd(after[0][key] / c.MiB, 1) if after else None),
        name + '_rss_mb_end': c.rnd(samples[-1][key] / c.MiB, 1),
        name + '_rss_mb_max': c.rnd(max(s[key] for s in samples) / c.MiB,
                                    1),
        name + '_rss_mb_start': c.rnd(samples[0][key] / c.MiB, 1),
    }


def _count(paths, text) -> int:
    return sum(scale._count(p, text) for p in paths)


def main():
    def more(p):
        p.add_argument('--database', choices=('sqlite', 'postgresql'),
                       default='sqlite',
                       help='The manager\'s database (default sqlite).')
        p.add_argument('--deltas', type=int, default=None,
                       help='Durable deltas to run for after the baselines '
                            '(default 20000, quick 600).')
        p.add_argument('--instances', type=int, default=20,
                       help='Protected VMs (default %(default)s).')
        p.add_argument('--interval', type=float, default=1.0,
                       help='[policy] interval, seconds (default '
                            '%(default)s).')
        p.add_argument('--sample', type=float, default=None,
                       help='Seconds between RSS samples (default 10, '
                            'quick 2).')
        p.add_argument('--warmup', type=float, default=0.2,
                       help='Fraction of the deltas left out of the fit '
                            '(default %(default)s).')
        p.add_argument('--batch', type=int, default=25,
                       help='VMs started and protected per batch.')
        p.add_argument('--age-tiers', default='',
                       help='[retention] age_tiers (default none: the '
                            'newest 24 restore points of each instance '
                            'are kept; the project\'s default keeps every '
                            'one of the last hour).')
    args = c.parse_args(__doc__, more)
    c.exit_on_sigterm()
    n = args.instances
    target = args.deltas or (600 if args.quick else 20000)
    every = args.sample or (2.0 if args.quick else 10.0)
    rate = n / args.interval
    # NOTE: a limit, not a wait: a run that falls far behind ends and says
    # so in deltas_durable / deltas_expected.
    limit = target / rate * 1.5 + 60
    vms, daemons, samples, loads = [], [], [], []
    server = PostgreSQL() if args.database == 'postgresql' else NoServer()
    with c.workdir(args, 'soak') as wd, c.rabbitmq(wd) as broker, \
            server as dbserver:
        os.makedirs(os.path.join(wd, 'vms'))
        connection = dbserver.url or 'sqlite:///%s/ha-snapshot.sqlite' % wd
        config = write_config(os.path.join(wd, 'ha-snapshot.conf'), wd,
                              broker.transport_url, connection,
                              args.interval, args.age_tiers)
        c.run(sys.executable, '-m', 'ha_snapshot.cmd.manage',
              '--config-file', config, 'db', 'sync')
        conf = scale.load_conf(config)
        transport = rpc.get_transport(conf)
        db = db_api.Database(conf)
        driver = hypervisor.get_driver(conf, 'qemu')
        logs = [os.path.join(wd, 'manager.log'), os.path.join(wd, 'agent.log')]
        try:
            manager = scale.Daemon('ha_snapshot.cmd.manager', config, logs[0],
                                   'ha-snapshot-manager started')
            daemons.append(manager)
            agent = scale.Daemon('ha_snapshot.cmd.agent', config, logs[1],
                                 'ha-snapshot-agent started')
            daemons.append(agent)
            # NOTE: generous: the machine may be shared and busy.
            manager.wait_ready(300)
            agent.wait_ready(300)
            api = agent_rpcapi.AgentAPI(
                transport, signer=c.manager_signer(conf))
            scale.protect_vms(driver, wd, n, args.batch, vms, db, api)
            scale.wait_for_baselines(db, n, agent)
            seq0 = {r.uuid: r.last_sequence or 0
                    for r in db.list_instances(host=AGENT_HOST)}
            c.log('%d baselines durable; running for %d deltas (%.0f/s '
                  'due, at most %.0f s)', n, target, rate, limit)
            t0 = time.monotonic()
            cpu0 = {d.name: d.cpu() for d in daemons}
            host0 = psutil.cpu_times()
            done = 0
            while done < target and time.monotonic() - t0 < limit:
                done = durable_total(db, seq0)
                samples.append({'t': c.rnd(time.monotonic() - t0, 1),
                                'deltas': done,
                                'manager_rss': manager.rss(),
                                'agent_rss': agent.rss()})
                loads.append(os.getloadavg()[0])
                if len(samples) % max(1, int(60 / every)) == 0:
                    c.log('%d deltas durable, manager %.1f MB, agent %.1f '
                          'MB, load %.2f', done,
                          samples[-1]['manager_rss'] / c.MiB,
                          samples[-1]['agent_rss'] / c.MiB, loads[-1])
                for d in daemons:
                    if d.proc.poll() is not None:
                        raise RuntimeError('%s exited with %s: %s' % (
                            d.name, d.proc.returncode, d.tail()))
                time.sleep(every)
            window = time.monotonic() - t0
            done = durable_total(db, seq0)
            threads = {d.name: d.threads() for d in daemons}
            cpu = {d.name: (d.cpu() - cpu0[d.name]) / window
                   for d in daemons}
            host1 = psutil.cpu_times()
            host_busy = c.host_busy(host0, host1) / window
        finally:
            scale.stop_all(daemons, vms)
            db.dispose()
            transport.cleanup()
        errors = _count(logs, ' ERROR ')
        warnings = _count(logs, ' WARNING ')
        locked = _count(logs, 'database is locked')
        problems = (scale._first(logs[1], (' ERROR ', ' WARNING '))
                    + scale._first(logs[0], (' ERROR ', ' WARNING ')))

    expected = n * window / args.interval
    warm = done * args.warmup
    result = {
        'benchmark': 'soak', 'quick': args.quick, 'database': args.database,
        'instances': n, 'interval_s': args.interval,
        'retention_age_tiers': args.age_tiers,
        'window_s': c.rnd(window, 1), 'deltas_target': target,
        'deltas_durable': done, 'deltas_expected': round(expected, 1),
        'durable_ratio': c.rnd(done / expected, 4) if expected else None,
        'warmup_deltas': int(warm), 'samples': len(samples),
        'sample_s': every,
        'log_errors': errors, 'log_warnings': warnings,
        'database_locked': locked, 'log_first_problems': problems[:6],
        'loadavg_1m_mean': c.rnd(sum(loads) / len(loads), 2) if loads
        else None,
        'loadavg_1m_max': c.rnd(max(loads), 2) if loads else None,
        'host_cpus': psutil.cpu_count(),
        'manager_cpu_fraction': c.rnd(cpu['manager'], 3),
        'agent_cpu_fraction': c.rnd(cpu['agent'], 3),
        'host_cpu_fraction': c.rnd(host_busy, 3),
        'manager_threads': threads['manager'],
        'agent_threads': threads['agent'],
        'vm_start_retries': len(scale.START_RETRIES),
        'rss_series_mb': [(s['deltas'], c.rnd(s['manager_rss'] / c.MiB, 1),
                           c.rnd(s['agent_rss'] / c.MiB, 1))
                          for s in samples[::max(1, len(samples) // 40)]],
        'definition': 'kb_per_1000_deltas = least-squares slope of RSS (KiB) '
                      'against durable deltas over the samples after the '
                      'first warmup fraction of the deltas, x 1000; '
                      'durable_ratio = deltas durable / (instances x window '
                      '/ interval); rss_series_mb = (deltas, manager MB, '
                      'agent MB), at most ~40 of the samples',
    }
    if samples:
        result.update(growth(samples, 'manager_rss', warm))
        result.update(growth(samples, 'agent_rss', warm))
    c.emit(result)


if __name__ == '__main__':
    os.environ.setdefault('LC_ALL', 'C')
    main()
