"""Simulated agents of many compute hosts in one process (not a
benchmark itself): real deltas over the real bus to real managers.

Used by manager_scale.py, whose docstring says what is real and what is
not. Each instance is recorded in the database on its host (as the Nova
hook does), registered through the project's manager client
(ha_snapshot.manager.rpcapi.ManagerAPI, signed with its host's identity,
routing each delta to the owner it learns), and ships a delta every
interval after its previous one started: clusters of data at random
offsets, one part made the way the agent makes parts (zstd when it pays,
sha256), ``put_part`` then ``commit_delta``. An error is counted by type
and the delta sent again after 1 s, from its first part, once the
instance registered again (as the agent does after a failure).
"""

import collections
import concurrent.futures
import hashlib
import heapq
import random
import threading
import time
import uuid

import zstandard

import _common as c

from ha_snapshot import codec
from ha_snapshot import delta as delta_mod
from ha_snapshot.manager import rpcapi as manager_rpcapi
from ha_snapshot import rpc_auth

CLUSTER = 64 * c.KiB
DISK = c.GiB
PROJECT = 'scale'


class SimInstance:

    def __init__(self, host: str, api):
        self.uuid = str(uuid.uuid4())
        self.host = host
        self.api = api
        self.sequence = 0
        self.parent = None


class SimAgents:
    """The agents of many hosts in this process: a heap of instances by
    due time, ``workers`` threads shipping what is due."""

    def __init__(self, conf, transport, hosts: int, instances: int,
                 interval: float, delta_kib: int, data: str,
                 workers: int, seed: int):
        keys = rpc_auth.Keys.from_conf(conf)
        self.apis = {}
        for i in range(hosts):
            host = 'sim-host-%02d' % i
            self.apis[host] = manager_rpcapi.ManagerAPI(
                transport, timeout=30, signer=rpc_auth.Signer(
                    rpc_auth.host_identity(host), keys))
        names = sorted(self.apis)
        self.instances = [SimInstance(names[i % hosts],
                                      self.apis[names[i % hosts]])
                          for i in range(instances)]
        self.interval = interval
        self.clusters = delta_kib * c.KiB // CLUSTER
        self.rng = random.Random(seed)
        self.pool = (c.random_bytes(4 * c.MiB) if data == 'random'
                     else c.text_bytes(4 * c.MiB, self.rng))
        self.workers = workers
        self.errors = collections.Counter()
        self.first_errors = []
        self.acked = 0
        self.lock = threading.Lock()
        self.due = []
        self.cond = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self.threads = []

    def record(self, db) -> None:
        for inst in self.instances:
            db.create_instance(inst.uuid, PROJECT, host=inst.host,
                               status='protecting', driver='qemu')

    def _delta(self, inst):
        rng = self.rng
        with self.lock:
            where = sorted(rng.sample(range(DISK // CLUSTER), self.clusters))
            starts = [rng.randrange(len(self.pool) - CLUSTER)
                      for _ in where]
        raw = b''.join(self.pool[s:s + CLUSTER] for s in starts)
        header = delta_mod.DeltaHeader(
            instance=inst.uuid, project=PROJECT, sequence=inst.sequence,
            parent=inst.parent, virtual_size=DISK, cluster_size=CLUSTER,
            part_count=1 if raw else 0, changed_bytes=len(raw),
            data_bytes=len(raw), full=inst.parent is None)
        parts = []
        if raw:
            packed = codec.compress_if_it_pays(
                raw, zstandard.ZstdCompressor(level=3))
            parts.append(delta_mod.DeltaPart(
                instance=inst.uuid, sequence=inst.sequence, index=0,
                extents=[(w * CLUSTER, CLUSTER, delta_mod.DATA)
                         for w in where],
                raw_size=len(raw), sha256=hashlib.sha256(raw).hexdigest(),
                payload=raw if packed is None else packed,
                compression='none' if packed is None else 'zstd'))
        return delta_mod.Delta(header, parts)

    def _error(self, inst, e) -> None:
        with self.lock:
            self.errors[type(e).__name__] += 1
            if len(self.first_errors) < 5:
                self.first_errors.append('%s: %s: %s' % (
                    inst.uuid, type(e).__name__, str(e)[:200]))

    def register(self, inst) -> None:
        while not self.stopping.is_set():
            try:
                reg = inst.api.register_instance(
                    inst.uuid, PROJECT, inst.host, 'qemu', {})
                inst.sequence = max(inst.sequence, reg['last_sequence'] + 1)
                inst.parent = reg['newest_restore_point']
                return
            except Exception as e:
                self._error(inst, e)
                self.stopping.wait(1.0)

    def ship(self, inst) -> None:
        """One delta of ``inst``, sent until durable."""
        delta = self._delta(inst)
        while not self.stopping.is_set():
            try:
                for part in delta.parts():
                    inst.api.put_part(inst.uuid, inst.sequence,
                                      part.to_primitive(), timeout=15)
                ack = inst.api.commit_delta(delta.to_header_primitive(),
                                            timeout=20)
            except Exception as e:
                self._error(inst, e)
                if self.stopping.wait(1.0):
                    return
                self.register(inst)
                if delta.header.parent != inst.parent:
                    # NOTE: it was merged after all (its ack was lost);
                    # registering moved the sequence past it.
                    with self.lock:
                        self.acked += 1
                    return
                continue
            inst.parent = ack['restore_point']
            inst.sequence += 1
            with self.lock:
                self.acked += 1
            return

    def run_all(self, fn, parallel: int) -> None:
        """``fn(instance)`` for every instance, ``parallel`` at a time."""
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            list(pool.map(fn, self.instances))

    def start(self) -> None:
        now = time.monotonic()
        n = len(self.instances)
        self.due = [(now + self.interval * i / n, i, inst)
                    for i, inst in enumerate(self.instances)]
        heapq.heapify(self.due)
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, daemon=True,
                                 name='sim-%d' % i)
            t.start()
            self.threads.append(t)

    def _worker(self) -> None:
        while not self.stopping.is_set():
            with self.cond:
                while not self.stopping.is_set():
                    wait = (self.due[0][0] - time.monotonic()
                            if self.due else 1.0)
                    if self.due and wait <= 0:
                        _at, i, inst = heapq.heappop(self.due)
                        break
                    self.cond.wait(min(max(wait, 0.001), 1.0))
                else:
                    return
            started = time.monotonic()
            self.ship(inst)
            with self.cond:
                heapq.heappush(self.due, (started + self.interval, i, inst))
                self.cond.notify()

    def stop(self) -> None:
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        for t in self.threads:
            t.join(30)
