"""The database API of the manager: :class:`Database`.

Every public method is one transaction of a private oslo.db enginefacade,
configured from the ``conf`` given to the constructor with every
``[database]`` value, so nothing is taken from the global ``cfg.CONF``
(oslo.db still registers its options there when the engine starts) and
nothing happens at import time. Rows come back
as detached model objects whose columns are loaded (there are no lazy
relationships to trip over).

A transaction that meets a transient error (sqlite's "database is
locked", a deadlock, a lost connection: :func:`db_engine.transient`) is
run again with back-off for up to ``RETRY_FOR`` seconds, then fails with
:class:`exception.DatabaseBusy`; callers never see the driver's error.
On sqlite, write transactions of one Database take turns on a lock.

State changes that workers may race for are compare-and-swap ``UPDATE``s
(``... WHERE status IN (expected)``): exactly one of two managers moving an
instance from ``protected`` to ``recovering`` wins, the other gets
:class:`exception.InstanceStatusConflict`.

May import the rest of ha_snapshot.db, ha_snapshot.conf.database and
ha_snapshot.exception. A RecoveryStore is passed in, never imported.
"""

import contextlib
import datetime
import functools
import json
import time
import uuid as uuid_mod

from oslo_db import exception as db_exc
from oslo_db.sqlalchemy import enginefacade
from oslo_log import log as logging
import sqlalchemy as sa

from ha_snapshot.conf import database as db_conf
from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import models
from ha_snapshot.db import rebuild
from ha_snapshot import exception
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

Status = statuses.InstanceStatus
State = statuses.RecoveryState
# NOTE: where a recovery may go from each state; the last two are final.
RECOVERY_TRANSITIONS = {
    State.REQUESTED: (State.RUNNING, State.FAILED),
    State.RUNNING: (State.RUNNING, State.SUCCEEDED, State.FAILED),
    State.SUCCEEDED: (),
    State.FAILED: (),
}
_BATCH = 500
_UNCHANGED = object()
# NOTE: how long one transaction is tried again while the database is
# transiently unavailable, and the back-off between tries (seconds). A
# sqlite writer in another process holds the lock for milliseconds; a
# PostgreSQL failover takes seconds.
RETRY_FOR = 60.0
RETRY_INITIAL = 0.02
RETRY_MAX = 2.0


def instance_not_found(uuid: str) -> exception.InstanceNotFound:
    # NOTE: InstanceNotFound's own message speaks of the store.
    return exception.InstanceNotFound(
        'Instance %s is not recorded in the database: it is not protected.'
        % uuid, instance=uuid)


# --- helpers ----------------------------------------------------------------

def _checked(values, allowed: tuple, kind: str) -> tuple:
    values = (values,) if isinstance(values, str) else tuple(values)
    for value in values:
        if value not in allowed:
            raise exception.InvalidStatus(kind=kind, value=value,
                                allowed=', '.join(allowed))
    return values


def _retried(func):
    """Run a Database method (one transaction) again on transient errors."""
    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        delay, started = RETRY_INITIAL, time.monotonic()
        while True:
            try:
                return func(self, *args, **kwargs)
            except (db_exc.DBError, sa.exc.OperationalError) as e:
                if not db_engine.transient(e):
                    raise
                waited = time.monotonic() - started
                if waited + delay > RETRY_FOR:
                    LOG.warning('Database: %s gave up after %.0f s of '
                                'retries: %s', func.__name__, waited, e)
                    raise exception.DatabaseBusy(
                        reason=str(getattr(e, 'inner_exception', e))[:200],
                        seconds=waited)
                LOG.debug('Database: %s meets a transient error (%s); '
                          'again in %.2f s', func.__name__, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
    return wrapper


def _fenced(session, fence) -> None:
    """Run ``fence(session)`` first in a write transaction: a lease
    check (``ha_snapshot.db.membership.Lease.fence``) that raises
    LeaseLost, and so rolls the write back, if the writer lost its lease."""
    if fence is not None:
        fence(session)


class _Scope:
    """What enginefacade hangs one transaction on."""


class Database:
    """The manager's records, over oslo.db; one transaction per method."""

    def __init__(self, conf, *, clock=time.time):
        db_conf.register_opts(conf)
        self.clock = clock
        self._context = enginefacade.transaction_context()
        self._context.configure(**db_engine.engine_options(conf))
        timeout = conf.database.sqlite_busy_timeout
        pool_size = conf.database.max_pool_size or 5
        self._context.append_on_engine_create(
            lambda engine: db_engine.on_engine_create(engine, timeout,
                                                      pool_size))
        self._write_lock = db_engine.writer_lock(conf)

    @property
    def engine(self) -> sa.engine.Engine:
        return self._context.writer.get_engine()

    def dispose(self) -> None:
        """Close pooled connections (tests, and before a fork)."""
        self._context.dispose_pool()

    @contextlib.contextmanager
    def _writer(self):
        with self._write_lock:
            with self._context.writer.using(_Scope()) as session:
                yield session

    @contextlib.contextmanager
    def _reader(self):
        token = db_engine.READ_ONLY.set(True)
        try:
            with self._context.reader.using(_Scope()) as session:
                yield session
        finally:
            db_engine.READ_ONLY.reset(token)

    def _now(self) -> datetime.datetime:
        return db_engine.to_datetime(self.clock())

    # --- instances ----------------------------------------------------------

    @_retried
    def create_instance(self, uuid: str, project_id: str, *,
                        host: str | None = None,
                        status: str = Status.PROTECTING,
                        policy: str | None = None,
                        driver: str | None = None) -> models.Instance:
        """Record an instance; if it is already recorded, return its row.

        Idempotent on ``uuid`` (a notification delivered twice), whatever
        the other arguments; a known uuid under another project is refused.
        """
        _checked(status, models.INSTANCE_STATUSES, 'instance status')
        now = self._now()
        try:
            with self._writer() as session:
                row = session.get(models.Instance, uuid)
                if row is None:
                    row = models.Instance(
                        uuid=uuid, project_id=project_id, host=host,
                        status=status, policy=policy, driver=driver,
                        created_at=now, updated_at=now, recovery_attempts=0)
                    session.add(row)
                    session.flush()
        except db_exc.DBDuplicateEntry:
            # NOTE: another worker inserted it between our read and insert.
            row = self.get_instance(uuid)
        if row.project_id != project_id:
            raise exception.InstanceConflict(
                instance=uuid, existing=row.project_id,
                                   project=project_id)
        return row

    @_retried
    def get_instance(self, uuid: str) -> models.Instance:
        with self._reader() as session:
            row = session.get(models.Instance, uuid)
        if row is None:
            raise instance_not_found(uuid)
        return row

    @_retried
    def list_instances(self, project: str | None = None,
                       host: str | None = None, status=None,
                       include_deleted: bool = False) -> list:
        """Instances by project, host and status (one or several).

        Deleted instances are left out unless asked for, by
        ``include_deleted`` or by ``status``. Read-only
        :class:`models.InstanceRecord` tuples, not ORM objects (loading
        those was a third of the CPU of the API's server list).
        """
        # NOTE: the table's columns, not the mapped attributes: a query
        # built from those goes through the ORM's compilation and result
        # handling even when it selects a table (half of this call's CPU).
        table = models.Instance.__table__
        query = sa.select(table)
        if project is not None:
            query = query.where(table.c.project_id == project)
        if host is not None:
            query = query.where(table.c.host == host)
        if status is not None:
            query = query.where(table.c.status.in_(_checked(
                status, models.INSTANCE_STATUSES, 'instance status')))
        elif not include_deleted:
            query = query.where(table.c.status != Status.DELETED)
        query = query.order_by(table.c.created_at, table.c.uuid)
        with self._reader() as session:
            return [models.InstanceRecord._make(row)
                    for row in session.connection().execute(query)]

    def update_instance(self, uuid: str, *, host=_UNCHANGED,
                        policy=_UNCHANGED, driver=_UNCHANGED,
                        fence=None) -> models.Instance:
        """Change where and how an instance is protected (not its status).
        ``fence``: see :func:`_fenced` (an evacuation moves the host under
        its recovery's lease)."""
        values = {k: v for k, v in (('host', host), ('policy', policy),
                                    ('driver', driver)) if v is not _UNCHANGED}
        return self._update_instance(uuid, values, fence)

    def record_report(self, uuid: str, reason: str) -> models.Instance:
        """Remember the latest health report (for dedup of alarms)."""
        now = self._now()
        return self._update_instance(uuid, {'last_report_reason': reason,
                                            'last_report_at': now})

    @_retried
    def _update_instance(self, uuid, values, fence=None) -> models.Instance:
        values['updated_at'] = self._now()
        with self._writer() as session:
            _fenced(session, fence)
            result = session.execute(
                sa.update(models.Instance)
                .where(models.Instance.uuid == uuid).values(**values)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                raise instance_not_found(uuid)
            return session.get(models.Instance, uuid)

    @_retried
    def update_instance_status(self, uuid: str, expected, status: str, *,
                               count_attempt: bool = False,
                               reset_attempts: bool = False,
                               cooldown_until=_UNCHANGED,
                               fence=None) -> models.Instance:
        """Move an instance to ``status`` only if it is in ``expected``.

        ``expected`` is one status or several. The check and the change are
        one ``UPDATE``, so of concurrent callers expecting the same status
        exactly one succeeds; the others get InstanceStatusConflict naming
        the status they lost to. ``count_attempt`` adds one to
        ``recovery_attempts`` in the same statement, ``reset_attempts``
        zeroes it, ``cooldown_until`` (epoch, datetime or None) sets it.
        ``fence``: see :func:`_fenced`.
        """
        expected = _checked(expected, models.INSTANCE_STATUSES,
                            'instance status')
        _checked(status, models.INSTANCE_STATUSES, 'instance status')
        now = self._now()
        values = {'status': status, 'updated_at': now}
        if count_attempt:
            values['recovery_attempts'] = models.Instance.recovery_attempts + 1
        if reset_attempts:
            values['recovery_attempts'] = 0
        if cooldown_until is not _UNCHANGED:
            values['cooldown_until'] = db_engine.to_datetime(
                cooldown_until)
        if status == Status.DELETED:
            values['deleted_at'] = now
        with self._writer() as session:
            _fenced(session, fence)
            result = session.execute(
                sa.update(models.Instance)
                .where(models.Instance.uuid == uuid,
                       models.Instance.status.in_(expected))
                .values(**values)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                actual = session.execute(
                    sa.select(models.Instance.status)
                    .where(models.Instance.uuid == uuid)).scalar()
                if actual is None:
                    raise instance_not_found(uuid)
                raise exception.InstanceStatusConflict(
                    instance=uuid, actual=actual, status=status,
                    expected=' or '.join(expected))
            return session.get(models.Instance, uuid)

    def mark_instance_deleted(self, uuid: str) -> models.Instance:
        """The server is gone: status 'deleted', whatever it was (idempotent).

        Its restore points stay until retention or an operator removes them.
        """
        try:
            return self.update_instance_status(
                uuid, statuses.LIVE_INSTANCE_STATUSES, Status.DELETED)
        except exception.InstanceStatusConflict:
            return self.get_instance(uuid)

    # --- restore points -----------------------------------------------------

    @_retried
    def record_restore_point(self, rp, *, fence=None, forget=(),
                             taken_at: float | None = None
                             ) -> models.RestorePoint:
        """Record a durable restore point (a storage.objects.RestorePoint).

        Idempotent on (instance, delta_sequence): recording the same
        restore point again returns its row. Moves the instance's
        ``newest_restore_point_*`` to it unless a newer one is recorded, and
        raises ``last_sequence``, in the same transaction. ``forget``: ids
        of restore points retention removed, deleted in that transaction
        too (one commit per delta: on sqlite every commit is an fsync
        under the one write lock). ``fence``: see :func:`_fenced`.
        ``taken_at``: when the agent asked for the snapshot (the delta's
        header; the store's manifests do not keep it).
        """
        forget = list(forget)
        try:
            # NOTE: the usual case, a new restore point, is inserted
            # without looking for a row it would conflict with first: the
            # unique constraints (id; instance and number; instance and
            # delta sequence) refuse one, and only then is the row that is
            # there judged (one round trip less per delta).
            return self._record_restore_point(rp, fence, forget, taken_at,
                                              judge=False)
        except db_exc.DBDuplicateEntry:
            pass
        try:
            return self._record_restore_point(rp, fence, forget, taken_at)
        except db_exc.DBDuplicateEntry:
            # NOTE: a concurrent insert won the race; judge its row.
            return self._record_restore_point(rp, fence, forget, taken_at)

    def _record_restore_point(self, rp, fence, forget, taken_at,
                              judge=True):
        now = self._now()
        point = models.RestorePoint
        with self._writer() as session:
            _fenced(session, fence)
            self._forget(session, forget)
            # NOTE: the row lock orders concurrent recordings of one
            # instance (sqlite has BEGIN IMMEDIATE instead).
            instance = session.execute(
                sa.select(models.Instance)
                .where(models.Instance.uuid == rp.instance)
                .with_for_update()).scalar()
            if instance is None:
                raise instance_not_found(rp.instance)
            if judge:
                existing = self._existing_restore_point(session, rp)
                if existing is not None:
                    return existing
            row = point(
                id=rp.id, instance_uuid=rp.instance, number=rp.number,
                delta_sequence=rp.delta_sequence, parent_id=rp.parent,
                created_at=db_engine.to_datetime(rp.created_at),
                taken_at=db_engine.to_datetime(taken_at),
                virtual_size=rp.virtual_size, chunk_size=rp.chunk_size,
                changed_bytes=rp.changed_bytes, new_chunks=rp.new_chunks,
                new_bytes=rp.new_bytes, manifest_key=rp.key,
                consistency=getattr(rp, 'consistency', None)
                or statuses.Consistency.CRASH,
                disks=json.dumps(rp.disks) if getattr(rp, 'disks', None)
                else None)
            session.add(row)
            session.flush()
            newest = session.execute(
                sa.select(sa.func.max(point.number))
                .where(point.instance_uuid == rp.instance)).scalar()
            if rp.number >= newest:
                instance.newest_restore_point_id = row.id
                instance.newest_restore_point_at = row.created_at
            # NOTE: only a new row counts; a replayed recording returned
            # above.
            instance.merges = (instance.merges or 0) + 1
            instance.shipped_bytes = ((instance.shipped_bytes or 0)
                                      + rp.changed_bytes)
            instance.stored_bytes = (instance.stored_bytes or 0) + rp.new_bytes
            instance.last_sequence = max(rp.delta_sequence,
                                         instance.last_sequence or 0)
            instance.updated_at = now
            return row

    @staticmethod
    def _existing_restore_point(session, rp):
        """The row recorded for ``rp`` already (the same id, instance,
        number and delta sequence), None if there is none; raises
        RestorePointConflict for a row that holds one of them only."""
        point = models.RestorePoint
        for row in session.execute(sa.select(point).where(sa.or_(
                point.id == rp.id,
                sa.and_(point.instance_uuid == rp.instance,
                        sa.or_(point.number == rp.number,
                               point.delta_sequence == rp.delta_sequence)
                        )))).scalars():
            if (row.id, row.instance_uuid, row.number,
                    row.delta_sequence) == (rp.id, rp.instance, rp.number,
                                            rp.delta_sequence):
                return row
            if row.id == rp.id:
                field = 'id'
            elif row.delta_sequence == rp.delta_sequence:
                field = 'delta sequence %d' % rp.delta_sequence
            else:
                field = 'number %d' % rp.number
            raise exception.RestorePointConflict(restore_point=rp.id,
                                                 instance=rp.instance,
                                                 existing=row.id, field=field)
        return None

    @_retried
    def set_memory_state(self, restore_point: str) -> bool:
        """Record that ``restore_point`` carries a memory state; False
        when no such restore point is recorded (retention removed it)."""
        with self._writer() as session:
            return session.execute(
                sa.update(models.RestorePoint)
                .where(models.RestorePoint.id == restore_point)
                .values(memory_state=True)).rowcount > 0

    @_retried
    def restore_point_memory(self) -> dict:
        """instance uuid -> restore points with a memory state."""
        point = models.RestorePoint
        query = (sa.select(point.instance_uuid, sa.func.count())
                 .where(point.memory_state.is_(True))
                 .group_by(point.instance_uuid))
        with self._reader() as session:
            return {uuid: int(n) for uuid, n in session.execute(query)}

    @_retried
    def list_restore_points(self, instance: str) -> list:
        """The recorded restore points of an instance, oldest first."""
        with self._reader() as session:
            if session.get(models.Instance, instance) is None:
                raise instance_not_found(instance)
            return list(session.execute(
                sa.select(models.RestorePoint)
                .where(models.RestorePoint.instance_uuid == instance)
                .order_by(models.RestorePoint.number)).scalars())

    @_retried
    def delete_restore_points(self, ids) -> int:
        """Forget restore points (retention removed them); return how many.

        The instances they belonged to get their newest restore point
        recomputed; ``last_sequence`` stays.
        """
        with self._writer() as session:
            return self._forget(session, list(ids))

    def _forget(self, session, ids: list) -> int:
        deleted = 0
        for start in range(0, len(ids), _BATCH):
            batch = ids[start:start + _BATCH]
            owners = set(session.execute(
                sa.select(models.RestorePoint.instance_uuid)
                .where(models.RestorePoint.id.in_(batch))).scalars())
            deleted += session.execute(
                sa.delete(models.RestorePoint)
                .where(models.RestorePoint.id.in_(batch))
                .execution_options(synchronize_session=False)).rowcount
            for uuid in sorted(owners):
                self._refresh_newest(session, uuid)
        return deleted

    def _refresh_newest(self, session, uuid) -> None:
        newest = session.execute(
            sa.select(models.RestorePoint.id, models.RestorePoint.created_at)
            .where(models.RestorePoint.instance_uuid == uuid)
            .order_by(models.RestorePoint.number.desc()).limit(1)).first()
        session.execute(
            sa.update(models.Instance).where(models.Instance.uuid == uuid)
            .values(newest_restore_point_id=newest[0] if newest else None,
                    newest_restore_point_at=newest[1] if newest else None,
                    updated_at=self._now())
            .execution_options(synchronize_session=False))

    # --- recoveries ---------------------------------------------------------

    @_retried
    def create_recovery(self, instance: str, action: str, *,
                        reason: str | None = None,
                        restore_point_id: str | None = None,
                        attempt: int | None = None,
                        host_failure_id: str | None = None
                        ) -> models.Recovery:
        """Record a requested recovery; ``attempt`` defaults to the
        instance's ``recovery_attempts``; ``host_failure_id``: the host
        failure whose evacuation asks for it."""
        now = self._now()
        with self._writer() as session:
            row = session.get(models.Instance, instance)
            if row is None:
                raise instance_not_found(instance)
            recovery = models.Recovery(
                id=str(uuid_mod.uuid4()), instance_uuid=instance,
                action=action, state=State.REQUESTED, reason=reason,
                restore_point_id=restore_point_id,
                attempt=row.recovery_attempts if attempt is None else attempt,
                created_at=now, updated_at=now,
                host_failure_id=host_failure_id)
            session.add(recovery)
            return recovery

    @_retried
    def get_recovery(self, recovery_id: str) -> models.Recovery:
        with self._reader() as session:
            row = session.get(models.Recovery, recovery_id)
        if row is None:
            raise exception.RecoveryNotFound(recovery=recovery_id)
        return row

    @_retried
    def update_recovery(self, recovery_id: str, *, state: str | None = None,
                        step=_UNCHANGED, error=_UNCHANGED,
                        restore_point_id=_UNCHANGED,
                        fence=None) -> models.Recovery:
        """Advance a recovery along RECOVERY_TRANSITIONS (compare-and-swap).

        With no ``state`` the recovery keeps its state, which must not be
        final. Moving to 'running' sets ``started_at`` once; a final state
        sets ``finished_at``. ``fence``: see :func:`_fenced`.
        """
        now = self._now()
        values = {'updated_at': now}
        if state is None:
            sources = [s for s, targets in RECOVERY_TRANSITIONS.items()
                       if targets]
        else:
            _checked(state, models.RECOVERY_STATES, 'recovery state')
            sources = [s for s, targets in RECOVERY_TRANSITIONS.items()
                       if state in targets]
            values['state'] = state
            if state == State.RUNNING:
                values['started_at'] = sa.func.coalesce(
                    models.Recovery.started_at, now)
            elif not RECOVERY_TRANSITIONS[state]:
                values['finished_at'] = now
        for name, value in (('step', step), ('error', error),
                            ('restore_point_id', restore_point_id)):
            if value is not _UNCHANGED:
                values[name] = value
        with self._writer() as session:
            _fenced(session, fence)
            result = session.execute(
                sa.update(models.Recovery)
                .where(models.Recovery.id == recovery_id,
                       models.Recovery.state.in_(sources))
                .values(**values)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                actual = session.execute(
                    sa.select(models.Recovery.state)
                    .where(models.Recovery.id == recovery_id)).scalar()
                if actual is None:
                    raise exception.RecoveryNotFound(recovery=recovery_id)
                raise exception.RecoveryStateConflict(recovery=recovery_id,
                                            actual=actual,
                                            state=state or actual)
            return session.get(models.Recovery, recovery_id)

    @_retried
    def list_recoveries(self, instance: str | None = None,
                        state=None, *,
                        host_failure: str | None = None) -> list:
        """Recoveries, oldest first, of one instance, in some states
        and/or started by the evacuation of one host failure."""
        query = sa.select(models.Recovery)
        if instance is not None:
            query = query.where(models.Recovery.instance_uuid == instance)
        if host_failure is not None:
            query = query.where(
                models.Recovery.host_failure_id == host_failure)
        if state is not None:
            query = query.where(models.Recovery.state.in_(_checked(
                state, models.RECOVERY_STATES, 'recovery state')))
        query = query.order_by(models.Recovery.created_at,
                               models.Recovery.attempt, models.Recovery.id)
        with self._reader() as session:
            return list(session.execute(query).scalars())

    # --- agents -------------------------------------------------------------

    @_retried
    def record_agent(self, host: str,
                     version: str | None = None) -> models.Agent:
        """An agent was heard from: create or refresh its row."""
        now = self._now()
        for _try in range(2):
            try:
                with self._writer() as session:
                    row = session.get(models.Agent, host)
                    if row is None:
                        row = models.Agent(host=host, created_at=now)
                        session.add(row)
                    row.version, row.last_seen = version, now
                    session.flush()
                    return row
            except db_exc.DBDuplicateEntry:
                # NOTE: a concurrent first heartbeat; the row exists now.
                continue
        raise exception.DatabaseError(
            reason='agent %s could not be recorded' % host)

    @_retried
    def list_agents(self) -> list:
        with self._reader() as session:
            return list(session.execute(
                sa.select(models.Agent).order_by(models.Agent.host))
                .scalars())

    # --- figures (the API's /metrics) ---------------------------------------

    @_retried
    def restore_point_totals(self) -> dict:
        """instance uuid -> (restore points, changed bytes, new bytes) of
        the restore points recorded now (retention removes old ones)."""
        point = models.RestorePoint
        query = (sa.select(point.instance_uuid, sa.func.count(),
                           sa.func.coalesce(sa.func.sum(point.changed_bytes),
                                            0),
                           sa.func.coalesce(sa.func.sum(point.new_bytes), 0))
                 .group_by(point.instance_uuid))
        with self._reader() as session:
            return {uuid: (int(n), int(changed), int(new))
                    for uuid, n, changed, new in session.execute(query)}

    @_retried
    def restore_point_consistency(self) -> dict:
        """(instance uuid, consistency) -> (restore points, newest
        created_at) of the restore points recorded now."""
        point = models.RestorePoint
        query = (sa.select(point.instance_uuid, point.consistency,
                           sa.func.count(), sa.func.max(point.created_at))
                 .group_by(point.instance_uuid, point.consistency))
        with self._reader() as session:
            return {(uuid, kind): (int(n), newest)
                    for uuid, kind, n, newest in session.execute(query)}

    @_retried
    def recovery_counts(self) -> dict:
        """(instance uuid, state) -> number of recoveries."""
        query = (sa.select(models.Recovery.instance_uuid,
                           models.Recovery.state, sa.func.count())
                 .group_by(models.Recovery.instance_uuid,
                           models.Recovery.state))
        with self._reader() as session:
            return {(uuid, state): int(n)
                    for uuid, state, n in session.execute(query)}

    # --- rebuilding ---------------------------------------------------------

    def rebuild_from_store(self, store, *,
                           status: str = Status.PROTECTED) -> dict:
        """Make the database hold what a RecoveryStore holds (see
        :func:`ha_snapshot.db.rebuild.rebuild_from_store`)."""
        return rebuild.rebuild_from_store(self, store, status=status)
