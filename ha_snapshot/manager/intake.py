"""What the manager keeps for deltas not yet committed, besides the spool.

:class:`Prestores`: the chunk writes started ahead of a delta's merge
(:meth:`ha_snapshot.storage.store.RecoveryStore.prestore`), run by a few
threads after the part's call has answered. Only writes that have not
ended are kept (at most ``queue`` of them wait): a delta that is never
committed leaves nothing here.

:class:`IntakeSweeper`: the manager's thread that drops abandoned deltas
(:meth:`ha_snapshot.manager.manager.Manager.sweep`) every ``[manager]
spool_max_age`` / 10 seconds, at most every 60 s.

:class:`DeltaIntake`: ``put_part`` and ``commit_delta`` of the manager,
and ``abandon``/``sweep``: a delta that will not be merged (refused for
what it is, superseded by a newer commit, abandoned by its agent for
``[manager] spool_max_age``, or of an instance no longer protected) leaves
nothing: its parts go from the spool, the chunk writes started ahead for
it are cancelled and the chunks they stored removed.

May import the delta engine and ha_snapshot.exception; the manager gives
it its store, database and spool.
"""

import concurrent.futures
import errno
import threading
import time

from oslo_log import log as logging
from oslo_utils import uuidutils

from ha_snapshot import delta as delta_mod
from ha_snapshot import exception
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

# NOTE: a commit_delta of a delta whose merge already runs (the agent's
# call timed out and it asked again) waits this long for it, then says
# "ask again" rather than holding an RPC thread for the whole merge.
COMMIT_WAIT = 5.0
# NOTE: chunks stored ahead of their merge (Manager.put_part) are written
# by these threads after the part's call has answered, so the fsyncs do
# not hold the agent's window; parts beyond the queue are left to the
# merge (the queue holds their decoded bytes).
PRESTORE_THREADS = 2
PRESTORE_QUEUE = 16
# NOTE: chunks stored ahead are only a head start: a merge that waited this
# long for them goes on and stores what is still missing itself (chunk
# writes are atomic and content-addressed, so both may write one chunk).
PRESTORE_WAIT = 60.0


class Prestores:

    def __init__(self, threads: int, queue: int):
        self.queue = queue
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix='prestore')
        # NOTE: (instance, sequence) -> futures not known to have ended.
        self._running = {}
        self._lock = threading.Lock()

    def submit(self, instance: str, sequence: int, func, *args) -> bool:
        """Run ``func(*args)`` for this delta unless ``queue`` writes wait
        already (the merge then does that work); whether it was taken."""
        key = (instance, sequence)
        with self._lock:
            if sum(len(fs) for fs in self._running.values()) >= self.queue:
                return False
            future = self._pool.submit(func, *args)
            self._running.setdefault(key, []).append(future)
        future.add_done_callback(lambda f: self._ended(key, f))
        return True

    def _ended(self, key, future) -> None:
        with self._lock:
            futures = self._running.get(key, ())
            if future in futures:
                futures.remove(future)
                if not futures:
                    del self._running[key]

    def _take(self, match) -> list:
        with self._lock:
            keys = [k for k in self._running if match(k)]
            return [f for k in keys for f in self._running.pop(k)]

    def wait(self, instance: str, through: int, timeout: float) -> int:
        """Wait for the writes of this instance's deltas up to ``through``;
        return how many still run after ``timeout``."""
        futures = self._take(lambda k: k[0] == instance and k[1] <= through)
        _done, late = concurrent.futures.wait(futures, timeout)
        return len(late)

    def cancel(self, instance: str, sequence: int | None,
               timeout: float) -> int:
        """Cancel the writes of one delta (or of all the instance's) not
        started yet, wait for those under way; return how many still run
        after ``timeout``."""
        futures = self._take(lambda k: k[0] == instance and (
            sequence is None or k[1] == sequence))
        running = [f for f in futures if not f.cancel()]
        _done, late = concurrent.futures.wait(running, timeout)
        return len(late)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(fs) for fs in self._running.values())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class IntakeSweeper:
    """Calls ``sweep()`` every ``interval`` seconds in a thread."""

    def __init__(self, sweep, interval: float):
        self._sweep = sweep
        self.interval = interval
        self._stop = threading.Event()
        self._thread = None

    @classmethod
    def from_conf(cls, conf, sweep) -> 'IntakeSweeper':
        return cls(sweep, min(60.0, conf.manager.spool_max_age / 10))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sweep()
            except exception.HaSnapshotException as e:
                LOG.warning('Sweep of abandoned deltas failed (tried again '
                            'in %.0f s): %s', self.interval, e)
            except Exception:
                LOG.exception('Sweep of abandoned deltas failed (tried '
                              'again in %.0f s)', self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='intake-sweep')
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


class DeltaIntake:
    """The manager's delta intake: ``put_part``, ``commit_delta`` and what
    they leave behind. A part of :class:`~ha_snapshot.manager.manager.
    Manager`, which sets ``conf``, ``store``, ``db``, ``spool``,
    ``prestores``, ``_commits``/``_commits_lock`` and ``_protected`` /
    ``_project_of`` (an instance's database row and project)."""

    def owner_of(self, instance: str) -> str | None:
        """The host of the replica that owns ``instance``, as this one sees
        it; None with no membership (one manager, not a cluster) or when
        no owner is known (no live replica, or this one lost its standing
        and must not act as an owner)."""
        membership = getattr(self, 'membership', None)
        if membership is None:
            return None
        try:
            owner = membership.owner(instance)
        except exception.NoLiveManagers:
            return None
        if owner == membership.host and not membership.in_good_standing():
            return None
        return owner

    def _route(self, instance: str) -> None:
        """Refuse (WrongOwner) a delta of an instance this replica does not
        own: its parts and its commit must meet in one spool."""
        membership = getattr(self, 'membership', None)
        if membership is None:
            return
        owner = self.owner_of(instance)
        if owner != membership.host:
            raise exception.WrongOwner(instance=instance,
                                       owner=owner or 'unknown',
                                       host=membership.host)

    def put_part(self, instance, sequence, part) -> dict:
        self._route(instance)
        project = self._project_of(instance)

        def received(checked, data, digests):
            # NOTE: the merge's chunk writes start now, while the next
            # parts travel; the commit then finds them held. Only the
            # data extents go along (a part of zero extents has nothing
            # to store ahead, and its extents stay with the spool), and
            # only if they hold a whole chunk (a small delta's do not:
            # no thread is woken for nothing).
            extents = [e for e in checked.extents if e[2] == delta_mod.DATA]
            if data and self.store.holds_whole_chunk(instance, extents):
                self.prestores.submit(
                    instance, sequence, self.store.prestore, instance,
                    project, extents, data, digests, sequence)
        try:
            index = self._io(self.spool.put, instance, sequence, part,
                             received)
        except exception.DeltaTooManyParts:
            # NOTE: the delta cannot be merged whole: what came of it goes.
            self.abandon(instance, sequence)
            raise
        return {'instance': instance, 'sequence': sequence, 'index': index,
                'owner': self.owner_of(instance)}

    def _prestored(self, instance: str, sequence: int) -> None:
        """Wait for the chunks of this delta (and older ones) being stored
        ahead of the merge."""
        late = self.prestores.wait(instance, sequence, PRESTORE_WAIT)
        if late:
            LOG.warning('Instance %s, delta %d: %d chunk writes started '
                        'ahead still run after %.0f s; the merge stores '
                        'what they have not', instance, sequence, late,
                        PRESTORE_WAIT)

    def abandon(self, instance: str, sequence: int | None = None) -> None:
        """Forget a delta that will not be merged (refused, abandoned),
        or every uncommitted delta of an instance: its parts (memory and
        spool_dir), the chunk writes started ahead for it, and the chunks
        they stored."""
        self.prestores.cancel(instance, sequence, PRESTORE_WAIT)
        self.spool.drop(instance, sequence)
        try:
            self.store.discard_prestored(instance, sequence)
        except exception.HaSnapshotException as e:
            LOG.warning('Instance %s: chunks stored ahead for delta %s '
                        'left to gc: %s', instance, sequence, e)

    def sweep(self) -> list:
        """Drop the deltas abandoned for [manager] spool_max_age, and those
        of instances no longer protected; their (instance, sequence)."""
        dropped = self.spool.sweep()
        for instance, sequence in dropped:
            self.abandon(instance, sequence)
        # NOTE: owners first: a delta is in the spool before any chunk is
        # stored ahead for it.
        owners = self.store.prestored_owners()
        held = self.spool.deltas()
        with self._commits_lock:
            committing = set(self._commits)
        for owner in owners:
            # NOTE: a chunk write that outlived its delta's abandon.
            if owner[1] not in held.get(owner[0], ()) and (
                    owner not in committing):
                self.store.discard_prestored(*owner)
        instances = set(self.spool.deltas()) | {
            i for i, _s in self.store.prestored_owners()}
        for instance in instances:
            try:
                deleted = self.db.get_instance(instance).status == (
                    statuses.InstanceStatus.DELETED)
            except exception.InstanceNotFound:
                deleted = True
            if deleted:
                LOG.info('Instance %s is not protected: its uncommitted '
                         'deltas are dropped', instance)
                self.abandon(instance)
                dropped.append((instance, None))
        return dropped

    def commit_delta(self, header, raise_parts_missing: bool = True,
                     row=None) -> dict:
        """Merge a delta whose parts arrived; the durable ack.

        ``row``: the instance's database row as read for this very call
        (by the RPC guard), checked instead of reading it again.

        A delta with parts missing raises PartsMissing, or, for callers of
        the RPC API before 1.2 (``raise_parts_missing`` false), the plain
        InvalidDelta with the same message: their release cannot rebuild
        the subclass from the bus.
        """
        key = _delta_key(header)
        if key is not None:
            self._route(key[0])
        try:
            return self._checked_commit(header, row)
        except (exception.InvalidDelta, exception.InstanceNotFound,
                exception.InvalidInstance) as e:
            # NOTE: refused for what it is: sent again, it would be
            # refused again; nothing of it may stay (parts, chunks).
            known = _delta_key(header)
            if known is not None:
                self.abandon(*known)
            if isinstance(e, exception.PartsMissing) and (
                    not raise_parts_missing):
                raise exception.InvalidDelta(
                    e.message, instance=e.kwargs['instance'],
                    sequence=e.kwargs['sequence'],
                    reason=e.kwargs['reason']) from e
            raise

    def _checked_commit(self, header, row=None) -> dict:
        h = delta_mod.header_from_primitive(header)
        delta_mod.validate_header(h, self.conf.image.max_virtual_size)
        row = self._protected(h.instance, row)
        if row.project_id != h.project:
            raise exception.InvalidDelta(
                instance=h.instance, sequence=h.sequence,
                reason='project %s does not own this instance' % h.project)
        self.spool.touch(h.instance, h.sequence)
        key = (h.instance, h.sequence)
        with self._commits_lock:
            running = self._commits.get(key)
            if running is None:
                mine = self._commits[key] = threading.Event()
        if running is not None:
            if not running.wait(COMMIT_WAIT):
                raise exception.MergeInProgress(instance=h.instance,
                                                sequence=h.sequence)
            return self._checked_commit(header)
        try:
            return self._commit(h)
        finally:
            with self._commits_lock:
                self._commits.pop(key, None)
            mine.set()

    def _commit(self, h) -> dict:
        t0 = time.perf_counter()
        self._prestored(h.instance, h.sequence)
        t1 = time.perf_counter()
        listed = self._io(self.store.newest_listed, h.instance)
        newest = listed[0]
        rp = self._merged(h, newest)
        if rp is None and newest is not None and h.parent == newest.id \
                and h.sequence <= newest.delta_sequence:
            # NOTE: sequences only grow (a re-baseline goes on from the
            # highest); merged, this one would be a restore point the
            # database refuses (one per sequence), left in the store. On
            # another parent the merge refuses it (DeltaParentMismatch).
            raise exception.InvalidDelta(
                instance=h.instance, sequence=h.sequence,
                reason='it is not newer than restore point %s (made from '
                'delta %d): a stale resend, nothing merged'
                % (newest.id, newest.delta_sequence))
        fresh = rp is None
        t2 = time.perf_counter()
        if fresh:
            delta = self.spool.load(h)
            t2 = time.perf_counter()
            rp = self._io(self.store.merge, delta, None, listed)
        t3 = time.perf_counter()
        # NOTE: the new restore point is the newest in the store: retention
        # keeps it. Its record and the removed ones' go in one transaction.
        removed = self._io(self.store.apply_retention, h.instance)
        t4 = time.perf_counter()
        self.db.record_restore_point(rp, forget=removed, taken_at=h.taken_at)
        t5 = time.perf_counter()
        membership = getattr(self, 'membership', None)
        if fresh and membership is not None:
            # NOTE: in memory; the next heartbeat writes it.
            membership.counters.merged(rp.changed_bytes, rp.new_bytes)
        # NOTE: parts of this delta and of any older one (refused, or
        # superseded by a resend) are of no use any more, nor are chunks
        # stored ahead for them that this merge did not take.
        self.spool.drop_through(h.instance, h.sequence)
        self.store.discard_prestored(h.instance, through=h.sequence)
        LOG.debug('Instance %s: delta %d committed: prestores %.1f ms, '
                  'newest+load %.1f ms, merge %.1f ms, retention %.1f ms, '
                  'database %.1f ms, spool dropped %.1f ms', h.instance,
                  h.sequence, (t1 - t0) * 1000, (t2 - t1) * 1000,
                  (t3 - t2) * 1000, (t4 - t3) * 1000, (t5 - t4) * 1000,
                  (time.perf_counter() - t5) * 1000)
        LOG.info('Instance %s: delta %d durable as restore point %s (#%d)',
                 h.instance, h.sequence, rp.id, rp.number)
        return {'restore_point': rp.id, 'number': rp.number,
                'sequence': h.sequence, 'created_at': rp.created_at,
                'owner': self.owner_of(h.instance)}

    def _merged(self, h, newest):
        """The restore point this delta already made (its ack was lost, or
        the agent asked again while it merged), or None; ``newest``: the
        instance's newest restore point."""
        if newest is not None and (newest.parent == h.parent and
                                   newest.delta_sequence == h.sequence):
            LOG.info('Instance %s: delta %d already merged as %s',
                     h.instance, h.sequence, newest.id)
            return newest
        return None

    @staticmethod
    def _io(func, *args):
        # NOTE: a full disk or an I/O error must reach the agent as "not
        # durable, keep it", named, not as an anonymous remote error.
        try:
            return func(*args)
        except OSError as e:
            reason = 'the store is full' if e.errno == errno.ENOSPC else (
                'I/O error')
            raise exception.StorageError(reason='%s: %s' % (reason, e))


def _delta_key(header):
    """(instance, sequence) a commit header names, if it names one."""
    if not isinstance(header, dict):
        return None
    instance, sequence = header.get('instance'), header.get('sequence')
    if isinstance(instance, str) and uuidutils.is_uuid_like(instance) and (
            isinstance(sequence, int) and not isinstance(sequence, bool)
            and sequence >= 0):
        return instance, sequence
    return None


