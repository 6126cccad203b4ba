"""Which manager replicas are alive, and which one owns each instance.

:class:`Membership` is one replica's part: it records this replica (an
incarnation: a new id at every start) in the database, beats there every
``[manager_cluster] heartbeat_interval`` seconds on a thread, and after
each beat reads which replicas are alive (a beat within
``heartbeat_interval * dead_after_missed`` seconds, by the database's
clock) and rebuilds its hash ring over their hosts. :meth:`Membership.
owner` answers which host owns an instance: the same answer on every
replica that saw the same live set. The ring is tooz's consistent hash
ring (as ironic-conductor's), so when a replica joins or dies only the
instances it gains or held move; the others stay put.

The ring is over host names (``[manager] host``), not incarnations: a
replica that restarts gets its instances back, and ``topic.<host>`` is
where work for it will be sent.

Leases on exclusive work live in :mod:`ha_snapshot.db.membership`;
``Membership.acquire_lease`` takes one in this incarnation's name.

``Membership.counters`` (:mod:`ha_snapshot.manager.replica_counters`)
counts this incarnation's work; every beat writes them on its row.
"""

import collections
import dataclasses
from importlib import metadata
import os
import threading
import time
import uuid as uuid_mod

from oslo_log import log as logging
from tooz import hashring

from ha_snapshot.conf import manager_cluster as cluster_conf
from ha_snapshot.db import membership as db_membership
from ha_snapshot import exception
from ha_snapshot.manager import replica_counters

LOG = logging.getLogger(__name__)


def dead_after(conf) -> float:
    """Seconds without a heartbeat after which a replica is dead."""
    opts = conf.manager_cluster
    return opts.heartbeat_interval * opts.dead_after_missed


def build_ring(hosts, partitions: int) -> hashring.HashRing | None:
    """The ring over ``hosts`` (None when there is none)."""
    hosts = sorted(set(hosts))
    return hashring.HashRing(hosts, partitions=partitions) if hosts else None


def ring_owner(ring: hashring.HashRing, instance_uuid: str) -> str:
    node, = ring.get_nodes(instance_uuid.encode('utf-8'))
    return node


def count_owned(hosts, instance_uuids, partitions: int) -> dict:
    """host -> how many of ``instance_uuids`` it owns on the ring over
    ``hosts`` (every host listed, 0 included)."""
    counts = collections.Counter({host: 0 for host in hosts})
    ring = build_ring(hosts, partitions)
    if ring is not None:
        counts.update(ring_owner(ring, u) for u in instance_uuids)
    return dict(counts)


@dataclasses.dataclass(frozen=True)
class Standing:
    """One recorded incarnation as an operator sees it (:func:`survey`)."""

    replica: db_membership.Replica
    servers: int
    """Protected servers it owns now (0 when dead)."""
    leases: int
    """Leases it holds that have not expired."""
    counters: dict
    """Every counter of replica_counters.NAMES, as of its last beat."""


def survey(conf, db, instance_uuids=None) -> list:
    """Every recorded incarnation (by host, then start) with what it owns
    and did: alive or dead by the same rule as the replicas (the caller's
    ``[manager_cluster]`` options), its servers on the ring over the live
    replicas' hosts (what the replicas themselves compute after their
    next beat), its leases and its counters. For GET /v1/managers and
    GET /metrics. ``instance_uuids``: the servers not deleted, if the
    caller read them already."""
    cluster_conf.register_opts(conf)
    records = db_membership.Records(db)
    replicas = records.replicas(dead_after(conf))
    live = sorted({r.host for r in replicas if r.alive})
    if instance_uuids is None:
        instance_uuids = [row.uuid for row in db.list_instances()]
    owned = count_owned(live, instance_uuids,
                        conf.manager_cluster.hash_partitions)
    leases = records.held_leases() if replicas else {}
    return [Standing(replica=r,
                     servers=owned.get(r.host, 0) if r.alive else 0,
                     leases=leases.get(r.id, 0),
                     counters=replica_counters.known(r.counters))
            for r in replicas]


def software_version() -> str | None:
    try:
        return metadata.version('ha-snapshot')
    except Exception:  # NOTE: not installed (a source tree): no version.
        return None


class Membership:
    """This replica in the cluster of managers sharing one database."""

    def __init__(self, conf, db, host: str, *, records=None):
        cluster_conf.register_opts(conf)
        opts = conf.manager_cluster
        self.interval = opts.heartbeat_interval
        self.dead_after = dead_after(conf)
        self.partitions = opts.hash_partitions
        self.lease_duration = opts.lease_duration
        self.host = host
        self.id = str(uuid_mod.uuid4())
        self.records = records or db_membership.Records(db)
        self._lock = threading.Lock()
        self._live = ()
        self._ring = None
        self._stop = threading.Event()
        self._thread = None
        self.last_beat = None
        self.beats = 0
        self.counters = replica_counters.WorkCounters()

    # --- life ---------------------------------------------------------------

    def start(self) -> None:
        """Register, beat once (so the ring is there at once), then beat
        on a thread. Raises what the database raises on the first beat."""
        self.records.register(self.id, self.host, pid=os.getpid(),
                              version=software_version(),
                              forget_after=self.dead_after,
                              counters=self.counters.snapshot())
        self.refresh()
        self.last_beat = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name='manager-heartbeat', daemon=True)
        self._thread.start()
        LOG.info('Manager replica %s (incarnation %s) registered; live '
                 'replicas: %s', self.host, self.id,
                 ', '.join(r.host for r in self.live()) or 'none')

    def stop(self, *, unregister: bool = True) -> None:
        """Stop beating; with ``unregister`` (a clean stop) the others see
        this replica dead at once, without it they see it dead after the
        missed beats (what a crash looks like)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if unregister:
            try:
                self.records.unregister(self.id,
                                        counters=self.counters.snapshot())
            except exception.HaSnapshotException as e:
                LOG.warning('Manager replica %s could not unregister (the '
                            'others see it dead after %.0f s): %s',
                            self.host, self.dead_after, e)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except exception.HaSnapshotException as e:
                LOG.warning('Manager replica %s: heartbeat failed (%s); '
                            'trying again in %.1f s', self.host, e,
                            self.interval)
            except Exception:
                LOG.exception('Manager replica %s: heartbeat failed; '
                              'trying again in %.1f s', self.host,
                              self.interval)

    def beat(self) -> None:
        """One heartbeat, then a refresh of the live replicas and ring."""
        counters = self.counters.snapshot()
        if self.records.heartbeat(self.id, counters) is None:
            LOG.warning('Manager replica %s (incarnation %s) was not '
                        'registered any more (taken for stopped); '
                        'registering again', self.host, self.id)
            self.records.register(self.id, self.host, pid=os.getpid(),
                                  version=software_version(),
                                  counters=counters)
        self.last_beat = time.monotonic()
        self.beats += 1
        self.refresh()

    def refresh(self) -> None:
        live = tuple(r for r in self.records.replicas(self.dead_after)
                     if r.alive)
        ring = build_ring((r.host for r in live), self.partitions)
        with self._lock:
            before = {r.host for r in self._live}
            self._live, self._ring = live, ring
        after = {r.host for r in live}
        if before and before != after:
            LOG.info('Manager replicas changed: %s joined, %s left; live: '
                     '%s', ', '.join(sorted(after - before)) or 'none',
                     ', '.join(sorted(before - after)) or 'none',
                     ', '.join(sorted(after)))

    # --- answers ------------------------------------------------------------

    def live(self) -> list:
        """The live replicas (db.membership.Replica) at the last refresh."""
        with self._lock:
            return list(self._live)

    def owner(self, instance_uuid: str) -> str:
        """The host of the live replica that owns ``instance_uuid``."""
        with self._lock:
            ring = self._ring
        if ring is None:
            raise exception.NoLiveManagers(
                instance=instance_uuid,
                reason='no heartbeat seen yet' if self.last_beat is None
                else 'every replica missed its heartbeats')
        return ring_owner(ring, instance_uuid)

    def owns(self, instance_uuid: str) -> bool:
        return self.owner(instance_uuid) == self.host

    def in_good_standing(self) -> bool:
        """Whether this replica's own last successful beat is recent
        enough (``dead_after``, by its monotonic clock) that the others
        still count it alive: a replica that cannot reach the database
        must stop acting as an owner before the others take over."""
        last = self.last_beat
        return last is not None and time.monotonic() - last < self.dead_after

    # --- leases -------------------------------------------------------------

    def acquire_lease(self, key: str, duration: float):
        """A lease on ``key`` in this incarnation's name, or None."""
        return self.records.acquire_lease(key, self.id, duration)


class LeaseKeeper:
    """Holds a lease while work runs: renews it every third of its
    duration on a thread; :meth:`fence` is what the work's writes pass
    (``fence=keeper.fence``): it raises LeaseLost once the lease was taken
    over, so a replica that lost it cannot record anything more."""

    def __init__(self, records, lease, duration: float):
        self.records = records
        self.lease = lease
        self.duration = duration
        self.lost = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True,
            name='lease-%s' % lease.key[-12:])

    def start(self) -> 'LeaseKeeper':
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.duration / 3):
            try:
                self.lease = self.records.renew_lease(self.lease,
                                                      self.duration)
            except exception.LeaseLost as e:
                LOG.warning('%s', e)
                self.lost = e
                return
            except exception.HaSnapshotException as e:
                # NOTE: the database is away: the lease may expire; the
                # fence tells the work when it is taken over.
                LOG.warning('Lease %s not renewed (%s); trying again',
                            self.lease.key, e)

    def fence(self, session) -> None:
        self.lease.fence(session)

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if release and self.lost is None:
            try:
                self.records.release_lease(self.lease)
            except exception.HaSnapshotException as e:
                LOG.warning('Lease %s not released (it expires): %s',
                            self.lease.key, e)


class Leader:
    """One replica at a time leads a periodic task (the image sweep, the
    host monitor): before each round :meth:`lead` takes the lease ``key``
    or, holding it, renews it for ``duration()`` seconds (a round's
    interval plus ``[manager_cluster] lease_duration``, so a leader that
    died hands over after that). Without ``membership`` (one manager
    alone) it always leads. ``fence`` is the current lease's check for
    writes made in the round: None without membership; a check that
    refuses every write once the lease is released or was lost."""

    def __init__(self, membership, key: str, duration, label: str):
        self.membership = membership
        self.key = key
        self.duration = duration
        self.label = label
        self.lease = None

    @property
    def fence(self):
        if self.membership is None:
            return None
        if self.lease is None:
            return self._not_held
        return self.lease.fence

    def _not_held(self, _session) -> None:
        raise exception.LeaseLost(key=self.key, generation=0,
                                  reason='not held by this replica')

    def hold(self) -> None:
        """Renew the lease before work that must not be done twice (a
        fencing call): LeaseLost if another replica leads now."""
        if not self.lead():
            raise exception.LeaseLost(
                key=self.key, generation=0,
                reason='another replica leads %s now' % self.label)

    def lead(self) -> bool:
        """Take or renew the lease; whether this replica leads."""
        if self.membership is None:
            return True
        duration = self.duration()
        records = self.membership.records
        if self.lease is not None:
            try:
                self.lease = records.renew_lease(self.lease, duration)
                return True
            except exception.LeaseLost as e:
                LOG.info('%s: no longer the leader (%s)', self.label, e)
                self.lease = None
        self.lease = self.membership.acquire_lease(self.key, duration)
        if self.lease is not None:
            LOG.info('%s: replica %s leads (lease generation %d)',
                     self.label, self.membership.host, self.lease.generation)
        return self.lease is not None

    def release(self) -> None:
        """Give the lead up (a clean stop hands it over at once, not
        after the lease expires)."""
        if self.lease is None:
            return
        try:
            self.membership.records.release_lease(self.lease)
        except exception.HaSnapshotException as e:
            LOG.warning('%s: leader lease not released (it expires): %s',
                        self.label, e)
        self.lease = None
