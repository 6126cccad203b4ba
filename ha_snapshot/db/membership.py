"""Manager replicas and leases in the database: :class:`Records`.

``managers`` has one row per incarnation of a manager replica (a process:
a restart is a new row) and its latest heartbeat; ``leases`` has one row
per piece of exclusive work ever leased (a merge of one instance's delta,
a recovery), its holder, its expiry and its fencing generation.

Time: every time stored or compared here is read from the database
server's clock (:func:`database_now`), never from a replica's own, so
replicas whose clocks differ still agree on who is dead and which lease
has expired. (On sqlite "the server" is the one host it runs on.)

Leases work the same on PostgreSQL, MySQL/MariaDB/Galera and sqlite with
plain SQL, no ``GET_LOCK`` or advisory locks: acquiring is one
conditional ``UPDATE ... WHERE owner IS NULL OR expires_at < now`` that
also adds one to ``generation``, or the first ``INSERT`` of the row (of
two replicas inserting at once, the unique key lets one win and the other
judges the winner's row). A write made under a lease calls
:func:`check_lease` in its own transaction (``Database`` methods take it
as ``fence=lease.fence``): it locks the lease row and raises
:class:`~ha_snapshot.exception.LeaseLost` unless the generation is still
the writer's, so the whole write is rolled back. An expired lease that
nobody took over still fences true: nobody else has done the work.

May import the rest of ha_snapshot.db and ha_snapshot.exception.
"""

import dataclasses
import datetime
import json

from oslo_db import exception as db_exc
import sqlalchemy as sa

from ha_snapshot.db import api as db_api
from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import models
from ha_snapshot import exception

# NOTE: the server's time in naive UTC, the way every DateTime is stored.
# clock_timestamp(), not now(): PostgreSQL's now() is the transaction's
# start.
_NOW_SQL = {
    'postgresql': "SELECT CAST(clock_timestamp() AT TIME ZONE 'UTC' "
                  "AS timestamp)",
    'mysql': 'SELECT UTC_TIMESTAMP(6)',
    'mariadb': 'SELECT UTC_TIMESTAMP(6)',
    'sqlite': "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def database_now(session) -> datetime.datetime:
    """The database server's clock, naive UTC, read inside ``session``."""
    dialect = session.connection().dialect.name
    try:
        statement = _NOW_SQL[dialect]
    except KeyError:
        raise exception.ConfigurationError(
            reason='manager replicas and leases need PostgreSQL, MySQL, '
                   'MariaDB or sqlite, not %s' % dialect)
    value = session.execute(sa.text(statement)).scalar()
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return db_engine.to_datetime(value)


def _seconds(delta: datetime.timedelta) -> float:
    return delta.total_seconds()


def encode_counters(counters: dict) -> str:
    """A replica's counters (name -> non-negative int) as stored."""
    for name, value in counters.items():
        if not isinstance(name, str) or isinstance(value, bool) or (
                not isinstance(value, int)) or value < 0:
            raise ValueError('replica counter %r: %r is not a count'
                             % (name, value))
    return json.dumps(counters, sort_keys=True, separators=(',', ':'))


def decode_counters(text: str | None) -> dict:
    """The counters of a ``managers`` row: what of ``text`` is a JSON
    object of non-negative integers ({} for none or for anything else:
    a row another release wrote must not break a listing)."""
    if not text:
        return {}
    try:
        values = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(values, dict):
        return {}
    return {name: value for name, value in values.items()
            if isinstance(value, int) and not isinstance(value, bool)
            and value >= 0}


@dataclasses.dataclass(frozen=True)
class Replica:
    """A manager incarnation as the database saw it at ``now``."""

    id: str
    host: str
    pid: int | None
    version: str | None
    started_at: datetime.datetime
    heartbeat_at: datetime.datetime
    stopped_at: datetime.datetime | None
    heartbeat_age: float
    alive: bool
    # NOTE: what the incarnation did since it registered, as of its last
    # beat (manager.replica_counters names them).
    counters: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Lease:
    """A lease held: pass ``fence`` to the writes made under it."""

    key: str
    owner: str
    generation: int
    expires_at: datetime.datetime

    def fence(self, session) -> None:
        check_lease(session, self.key, self.generation, owner=self.owner)


def check_lease(session, key: str, generation: int,
                owner: str | None = None) -> None:
    """Raise LeaseLost unless lease ``key`` is still at ``generation`` (and
    held by ``owner`` if given), inside the caller's write transaction.

    The lease row stays locked until that transaction ends, so nobody can
    take the lease over between this check and the caller's commit (on
    sqlite the write transaction holds the whole database).
    """
    row = session.execute(
        sa.select(models.Lease.owner, models.Lease.generation)
        .where(models.Lease.key == key).with_for_update()).first()
    if row is None:
        reason = 'there is no such lease'
    elif row.generation != generation:
        reason = 'taken at generation %d since' % row.generation
    elif row.owner is None:
        reason = 'released'
    elif owner is not None and row.owner != owner:
        reason = 'held by %s' % row.owner
    else:
        return
    raise exception.LeaseLost(key=key, generation=generation, reason=reason)


class Records:
    """The ``managers`` and ``leases`` rows of a :class:`db_api.Database`.

    ``clock`` (tests) replaces the database's clock with a callable that
    returns an epoch timestamp or a datetime.
    """

    def __init__(self, db: db_api.Database, clock=None):
        self.db = db
        self._clock = clock

    def now(self, session) -> datetime.datetime:
        if self._clock is not None:
            return db_engine.to_datetime(self._clock())
        return database_now(session)

    # --- replicas -----------------------------------------------------------

    @db_api._retried
    def register(self, manager_id: str, host: str, *, pid: int | None = None,
                 version: str | None = None,
                 forget_after: float | None = None,
                 counters: dict | None = None) -> datetime.datetime:
        """Record replica ``manager_id`` as alive now (again, if its row
        went away); return the database time of the beat. ``counters``:
        what it did so far (stored as given; None leaves them as they
        are).

        ``forget_after``: rows of earlier incarnations on ``host`` that
        stopped, or whose last beat is older than this many seconds, are
        deleted (one host's restarts do not pile up).
        """
        with self.db._writer() as session:
            now = self.now(session)
            # NOTE: one replica per host: its earlier incarnations are dead
            # (crashed, if not stopped) and their leases free at once, not
            # after lease_duration (a restarted manager resumes its own
            # recoveries without waiting). Released, a lease fences its
            # old holder all the same (check_lease: "released").
            earlier = sa.select(models.Manager.id).where(
                models.Manager.host == host, models.Manager.id != manager_id)
            session.execute(
                sa.update(models.Lease)
                .where(models.Lease.owner.in_(earlier))
                .values(owner=None, expires_at=None)
                .execution_options(synchronize_session=False))
            if forget_after is not None:
                old = models.Manager
                session.execute(
                    sa.delete(old).where(
                        old.host == host, old.id != manager_id,
                        sa.or_(old.stopped_at.is_not(None),
                               old.heartbeat_at < now - datetime.timedelta(
                                   seconds=forget_after)))
                    .execution_options(synchronize_session=False))
            row = session.get(models.Manager, manager_id)
            if row is None:
                row = models.Manager(id=manager_id, host=host,
                                     started_at=now)
                session.add(row)
            row.host, row.pid, row.version = host, pid, version
            row.heartbeat_at, row.stopped_at = now, None
            if counters is not None:
                row.counters = encode_counters(counters)
            session.flush()
        return now

    @db_api._retried
    def heartbeat(self, manager_id: str,
                  counters: dict | None = None) -> datetime.datetime | None:
        """Beat, with the replica's ``counters`` in the same update (None
        leaves them); the database time of the beat, or None if the
        replica is not registered (its row was deleted or marked
        stopped)."""
        values = {}
        if counters is not None:
            values['counters'] = encode_counters(counters)
        with self.db._writer() as session:
            now = self.now(session)
            result = session.execute(
                sa.update(models.Manager)
                .where(models.Manager.id == manager_id,
                       models.Manager.stopped_at.is_(None))
                .values(heartbeat_at=now, **values)
                .execution_options(synchronize_session=False))
            return now if result.rowcount == 1 else None

    @db_api._retried
    def unregister(self, manager_id: str,
                   counters: dict | None = None) -> None:
        """A clean stop: the replica is dead now, not after missed beats;
        ``counters``: its final counts (None leaves them)."""
        values = {}
        if counters is not None:
            values['counters'] = encode_counters(counters)
        with self.db._writer() as session:
            now = self.now(session)
            session.execute(
                sa.update(models.Manager)
                .where(models.Manager.id == manager_id)
                .values(stopped_at=now, **values)
                .execution_options(synchronize_session=False))

    @db_api._retried
    def replicas(self, dead_after: float) -> list:
        """Every recorded incarnation, by host then start, judged alive
        or dead (no beat for more than ``dead_after`` s, or stopped) by
        the database's clock now."""
        with self.db._reader() as session:
            now = self.now(session)
            rows = list(session.execute(
                sa.select(models.Manager).order_by(
                    models.Manager.host, models.Manager.started_at,
                    models.Manager.id)).scalars())
        out = []
        for row in rows:
            age = max(0.0, _seconds(now - row.heartbeat_at))
            out.append(Replica(
                id=row.id, host=row.host, pid=row.pid, version=row.version,
                started_at=row.started_at, heartbeat_at=row.heartbeat_at,
                stopped_at=row.stopped_at, heartbeat_age=age,
                alive=row.stopped_at is None and age <= dead_after,
                counters=decode_counters(row.counters)))
        return out

    @db_api._retried
    def held_leases(self) -> dict:
        """Incarnation id -> how many leases it holds that have not
        expired, by the database's clock now."""
        with self.db._reader() as session:
            now = self.now(session)
            lease = models.Lease
            rows = session.execute(
                sa.select(lease.owner, sa.func.count())
                .where(lease.owner.is_not(None), lease.expires_at >= now)
                .group_by(lease.owner)).all()
        return {owner: count for owner, count in rows}

    # --- leases -------------------------------------------------------------

    @db_api._retried
    def acquire_lease(self, key: str, owner: str,
                      duration: float) -> Lease | None:
        """Take lease ``key`` for ``duration`` s if it is free or expired;
        None if another holder has it. Each acquisition has a higher
        generation than any before it."""
        for _try in range(2):
            with self.db._writer() as session:
                now = self.now(session)
                expires = now + datetime.timedelta(seconds=duration)
                lease = models.Lease
                taken = session.execute(
                    sa.update(lease)
                    .where(lease.key == key,
                           sa.or_(lease.owner.is_(None),
                                  lease.expires_at < now))
                    .values(owner=owner, generation=lease.generation + 1,
                            acquired_at=now, expires_at=expires)
                    .execution_options(synchronize_session=False)).rowcount
                if taken == 1:
                    generation = session.execute(
                        sa.select(lease.generation)
                        .where(lease.key == key)).scalar_one()
                    return Lease(key, owner, generation, expires)
                if session.get(lease, key) is not None:
                    return None
            try:
                with self.db._writer() as session:
                    now = self.now(session)
                    expires = now + datetime.timedelta(seconds=duration)
                    session.add(models.Lease(
                        key=key, owner=owner, generation=1, acquired_at=now,
                        expires_at=expires))
                    session.flush()
                return Lease(key, owner, 1, expires)
            except db_exc.DBDuplicateEntry:
                # NOTE: another replica made the row first; judge it.
                continue
        return None

    @db_api._retried
    def renew_lease(self, held: Lease, duration: float) -> Lease:
        """Extend a held lease to ``duration`` s from now; LeaseLost if it
        was taken over or released (an expired lease nobody took is
        still renewed)."""
        with self.db._writer() as session:
            now = self.now(session)
            expires = now + datetime.timedelta(seconds=duration)
            lease = models.Lease
            result = session.execute(
                sa.update(lease)
                .where(lease.key == held.key, lease.owner == held.owner,
                       lease.generation == held.generation)
                .values(expires_at=expires)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                check_lease(session, held.key, held.generation, held.owner)
            return dataclasses.replace(held, expires_at=expires)

    @db_api._retried
    def release_lease(self, held: Lease) -> bool:
        """Give a lease up; False if it was no longer held."""
        with self.db._writer() as session:
            lease = models.Lease
            return session.execute(
                sa.update(lease)
                .where(lease.key == held.key, lease.owner == held.owner,
                       lease.generation == held.generation)
                .values(owner=None, expires_at=None)
                .execution_options(synchronize_session=False)
            ).rowcount == 1

    @db_api._retried
    def get_lease(self, key: str) -> models.Lease | None:
        with self.db._reader() as session:
            return session.get(models.Lease, key)
