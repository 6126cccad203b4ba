"""Delta shipping throughput over a real RabbitMQ vs a plain call loop.

Starts a private RabbitMQ broker on loopback and, in a child process, a real
manager endpoint (``ha_snapshot.manager.manager.Manager`` with a ``file``
store, a sqlite database and a spool, served by ``ha_snapshot.rpc.
get_server``) next to a trivial endpoint that takes one string and returns
its length. This process builds a baseline delta of a 64 MiB (16 MiB with
--quick) raw disk full of incompressible data and ships it the agent's way:
``ManagerAPI.put_part`` for every part, up to ``[agent] parts_in_flight``
at once (``ha_snapshot.agent.shipper.send_parts``, what the agent calls),
then
``ManagerAPI.commit_delta``, which answers once the restore point is
durable. Then, in the same round, the baseline: the trivial endpoint called
once per part, one call after the other, with a base64 string of exactly
the size of that part's payload (the same serializer, exchange and
broker); and the same calls with the agent's window (``windowed``), to
show what the window alone buys. Rounds alternate the order; every round
ships fresh random data under a new instance (nothing deduplicates).

* ``ship_mb_s``: changed bytes / (time of the put_part calls + the
  commit_delta call); parts are produced (read, compressed, hashed) before
  the clock starts. ``put_mb_s``: the put_part calls alone.
  ``agent_mb_s``: including producing the parts, as the agent's loop does
  (produce one part, send it, produce the next).
* ``baseline_mb_s``: the same number of data bytes / time of the plain
  call loop with same-size payloads.
* ``ratio`` = ship_mb_s / baseline_mb_s (medians over the rounds);
  ``put_ratio`` the same for put_part alone. ``windowed_baseline_mb_s``
  and ``ratio_vs_windowed`` compare with the windowed trivial calls.
* ``wire_per_changed``: bytes of the JSON of the parts and the header
  (what oslo.messaging carries, before its envelope) / changed bytes.
* CPU seconds of this process (the agent side), of the child (the
  manager side) and of the broker per phase, for the bottleneck: on a
  2-core host the three together keep both cores busy, so every CPU
  second the manager spends per byte beyond the trivial endpoint's shows
  in the ratio.

Goal (issue): ``ratio`` >= 0.8.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import threading
import time

import _common as c

from ha_snapshot.agent import shipper as shipper_mod

GOAL_RATIO = 0.8
ECHO_TOPIC = 'ha-snapshot-bench-echo'
SERVER = 'bench-manager'
PROJECT = 'bench'


# --- the child: manager endpoint + trivial endpoint --------------------------

class EchoEndpoint:
    """The plain baseline: takes a string, returns its length."""

    def __init__(self):
        import oslo_messaging as messaging
        self.target = messaging.Target(version='1.0')

    def echo(self, ctxt, data):
        return {'length': len(data)}


def serve(work: str, url: str) -> None:
    from ha_snapshot.db import api as db_api
    from ha_snapshot.db import migration
    from ha_snapshot.manager import manager as manager_mod
    from ha_snapshot.manager import spool as spool_mod
    from ha_snapshot import rpc
    from ha_snapshot.storage import store as store_mod

    conf = c.manager_conf(work, 'sqlite:///' + os.path.join(
        work, 'ha-snapshot.sqlite'))
    db = db_api.Database(conf)
    migration.upgrade(conf, database=db)
    store = store_mod.RecoveryStore.from_conf(conf)
    spool = spool_mod.Spool.from_conf(conf)
    manager = manager_mod.Manager(conf, store, db, spool)
    transport = rpc.get_transport(conf, url=url)
    servers = [
        rpc.get_server(transport, rpc.MANAGER_TOPIC, SERVER,
                       [manager_mod.ManagerEndpoint(manager)]),
        rpc.get_server(transport, ECHO_TOPIC, SERVER, [EchoEndpoint()]),
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for s in servers:
        s.start()
    print('READY', flush=True)
    while not stop.wait(0.5):
        pass
    for s in servers:
        s.stop()
    for s in servers:
        s.wait()
    transport.cleanup()
    db.dispose()


# --- this process: the agent side --------------------------------------------

def cpu_seconds(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class Meter:
    """Wall and CPU seconds of this process, of the child and of the
    broker (``procs``: the three psutil processes)."""

    def __init__(self, procs):
        self.procs = procs

    def __enter__(self):
        self.t = time.perf_counter()
        self.cpu = [cpu_seconds(p) for p in self.procs]
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t
        (self.client_cpu, self.server_cpu, self.broker_cpu) = [
            cpu_seconds(p) - c for p, c in zip(self.procs, self.cpu)]


def one_ship(conf, api, wd, size, rnd_index, procs, window) -> dict:
    inst = c.new_instance()
    path = c.make_raw(os.path.join(wd, 'disk%d.raw' % rnd_index), size,
                      [(0, c.random_bytes(size))])
    api.register_instance(inst, PROJECT, 'bench-host', 'qemu', {})
    info = c.inspect_whole(conf, path, 'raw')
    delta = c.build_delta(conf, info, instance=inst, project=PROJECT,
                          sequence=0, parent=None)
    with Meter(procs) as produce:
        prims = [p.to_primitive() for p in delta.parts()]
    header = delta.to_header_primitive()
    def put(prim):
        api.put_part(inst, 0, prim)
        return len(prim['payload'])
    with Meter(procs) as put_m:
        shipper_mod.send_parts(iter(prims), put, window)
    with Meter(procs) as commit:
        ack = api.commit_delta(header)
    assert ack['number'] == 1, ack
    os.unlink(path)
    wire = sum(len(json.dumps(p)) for p in prims) + len(json.dumps(header))
    return {'changed': delta.header.changed_bytes,
            'payload_lengths': [len(p['payload']) for p in prims],
            'payload_bytes': sum(len(p['payload']) for p in prims),
            'wire': wire, 'produce': produce, 'put': put_m,
            'commit': commit}


def one_baseline(echo, lengths, procs, window=1):
    # NOTE: base64 text of random bytes: what a part's payload looks like.
    import base64
    texts = []
    for n in lengths:
        raw = base64.b64encode(c.random_bytes(n * 3 // 4 + 3)).decode()
        texts.append(raw[:n])
    ctxt = _context()

    def call(text):
        out = echo.call(ctxt, 'echo', data=text)
        assert out['length'] == len(text)
        return len(text)
    with Meter(procs) as m:
        if window == 1:
            for text in texts:
                call(text)
        else:
            shipper_mod.send_parts(iter(texts), call, window)
    return m


def _context():
    from ha_snapshot import rpc
    return rpc.context()


def main():
    def more(p):
        p.add_argument('--serve', metavar='DIR', help=argparse.SUPPRESS)
        p.add_argument('--url', help=argparse.SUPPRESS)
        p.add_argument('--rounds', type=int, default=None,
                       help='Rounds (ship + baseline); default 5, quick 3.')
        p.add_argument('--size-mib', type=int, default=None,
                       help='Delta size in MiB (default 64, quick 16).')
        p.add_argument('--window', type=int, default=None,
                       help='Parts in flight (default: the agent\'s, '
                            '[agent] parts_in_flight).')
    args = c.parse_args(__doc__, more)
    if args.serve:
        return serve(args.serve, args.url)
    c.exit_on_sigterm()
    import psutil
    from ha_snapshot.manager import rpcapi as manager_rpcapi
    from ha_snapshot import rpc

    size = (args.size_mib or (16 if args.quick else 64)) * c.MiB
    rounds = args.rounds or (3 if args.quick else 5)
    with c.workdir(args, 'transport') as wd, c.rabbitmq(wd) as broker:
        conf = c.make_conf(os.path.join(wd, 'client-store'))
        window = args.window or conf.agent.parts_in_flight
        transport = rpc.get_transport(conf, url=broker.transport_url)
        child = c.start_manager_child(__file__, wd, broker.transport_url)
        try:
            procs = (psutil.Process(), psutil.Process(child.pid),
                     broker._beam)
            api = manager_rpcapi.ManagerAPI(transport, timeout=300)
            echo = rpc.get_client(transport, ECHO_TOPIC, '1.0', timeout=300,
                                  server=SERVER)
            echo.call(_context(), 'echo', data='warm-up')
            ships, bases, wbases = [], [], []
            for r in range(rounds):
                order = ('ship', 'base') if r % 2 == 0 else ('base', 'ship')
                for what in order:
                    if what == 'ship':
                        s = one_ship(conf, api, wd, size, r, procs, window)
                        ships.append(s)
                        t = s['put'].seconds + s['commit'].seconds
                        c.log('round %d: shipped %d MiB in %d parts: put '
                              '%.2f s + commit %.2f s = %.1f MB/s '
                              '(produce %.2f s)', r, size // c.MiB,
                              len(s['payload_lengths']), s['put'].seconds,
                              s['commit'].seconds,
                              c.mb_per_s(s['changed'], t),
                              s['produce'].seconds)
                    else:
                        lengths = (ships[-1]['payload_lengths'] if ships
                                   else _guess_lengths(conf, size))
                        m = one_baseline(echo, lengths, procs)
                        bases.append(m)
                        wm = one_baseline(echo, lengths, procs, window)
                        wbases.append(wm)
                        c.log('round %d: plain call loop, %d calls of %.1f '
                              'MB: %.2f s = %.1f MB/s (window of %d: %.1f '
                              'MB/s)', r, len(lengths), lengths[0] / 1e6,
                              m.seconds, c.mb_per_s(size, m.seconds),
                              window, c.mb_per_s(size, wm.seconds))
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            transport.cleanup()

    changed = ships[0]['changed']

    def med(values):
        return statistics.median(values)

    ship_s = med([s['put'].seconds + s['commit'].seconds for s in ships])
    put_s = med([s['put'].seconds for s in ships])
    agent_s = med([s['produce'].seconds + s['put'].seconds
                   + s['commit'].seconds for s in ships])
    base_s = med([m.seconds for m in bases])
    wbase_s = med([m.seconds for m in wbases])
    s0 = ships[len(ships) // 2]
    result = {
        'benchmark': 'transport', 'quick': args.quick, 'rounds': rounds,
        'delta_bytes': size, 'changed_bytes': changed,
        'parts': len(s0['payload_lengths']),
        'part_payload_bytes': max(s0['payload_lengths']),
        'ship_mb_s': c.mb_per_s(changed, ship_s),
        'put_mb_s': c.mb_per_s(changed, put_s),
        'agent_mb_s': c.mb_per_s(changed, agent_s),
        'baseline_mb_s': c.mb_per_s(changed, base_s),
        'ratio': c.rnd(base_s / ship_s, 3),
        'window': window,
        'windowed_baseline_mb_s': c.mb_per_s(changed, wbase_s),
        'ratio_vs_windowed': c.rnd(wbase_s / ship_s, 3),
        'put_ratio': c.rnd(base_s / put_s, 3),
        'wire_bytes': s0['wire'],
        'wire_per_changed': c.rnd(s0['wire'] / changed, 4),
        'payload_per_changed': c.rnd(s0['payload_bytes'] / changed, 4),
        'seconds': {
            'produce': c.rnd(med([s['produce'].seconds for s in ships]), 3),
            'put': c.rnd(put_s, 3),
            'commit': c.rnd(med([s['commit'].seconds for s in ships]), 3),
            'baseline': c.rnd(base_s, 3)},
        'cpu_seconds': {
            'agent_produce': c.rnd(med([s['produce'].client_cpu
                                        for s in ships]), 3),
            'agent_put': c.rnd(med([s['put'].client_cpu for s in ships]), 3),
            'manager_put': c.rnd(med([s['put'].server_cpu for s in ships]),
                                 3),
            'manager_commit': c.rnd(med([s['commit'].server_cpu
                                         for s in ships]), 3),
            'broker_put': c.rnd(med([s['put'].broker_cpu for s in ships]),
                                3),
            'baseline_client': c.rnd(med([m.client_cpu for m in bases]), 3),
            'baseline_server': c.rnd(med([m.server_cpu for m in bases]), 3),
            'baseline_broker': c.rnd(med([m.broker_cpu for m in bases]),
                                     3)},
        'per_round': [{
            'ship_mb_s': c.mb_per_s(changed, s['put'].seconds
                                    + s['commit'].seconds),
            'baseline_mb_s': c.mb_per_s(changed, m.seconds)}
            for s, m in zip(ships, bases)],
        'definition': 'ship = ManagerAPI.put_part of every (pre-produced) '
                      'part, the agent\'s window of parts in flight, '
                      '+ commit_delta (durable ack) to a manager in a '
                      'child process over a private RabbitMQ; baseline = '
                      'the same number of calls, one after the other, with '
                      'same-size base64 strings to a trivial endpoint in '
                      'the same child; '
                      'MB/s = changed bytes / seconds; medians over rounds',
        'goal': 'ratio >= %g' % GOAL_RATIO,
    }
    result['goal_met'] = result['ratio'] >= GOAL_RATIO
    c.emit(result)


def _guess_lengths(conf, size):
    part = conf.image.max_part_bytes
    n = -(-size // part)
    b64 = (part + 2) // 3 * 4
    return [b64] * n


if __name__ == '__main__':
    os.environ.setdefault('LC_ALL', 'C')
    main()
