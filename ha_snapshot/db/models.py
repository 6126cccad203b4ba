"""The tables of the manager's database, as SQLAlchemy 2.x models.

These classes describe the schema the migrations in ``migrations/versions``
build; a test compares the two on every backend, so a change here needs a
new migration (and the other way round). Production code never calls
``create_all``.

Times are naive UTC ``DateTime`` values (OpenStack's habit; MySQL and
sqlite have no time zone type), to the microsecond on every backend
(``DATETIME(6)`` on MySQL). Every constraint and index has an explicit
name so that migrations can find it again on every backend.

Imports only SQLAlchemy and ha_snapshot.statuses.
"""

import collections
import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy import orm

from ha_snapshot import statuses

# NOTE: the values of the CHECK constraints, as the migrations wrote them
# (ha_snapshot/statuses.py names them).
INSTANCE_STATUSES = statuses.INSTANCE_STATUSES
RECOVERY_STATES = statuses.RECOVERY_STATES


def _one_of(column: str, values: tuple) -> str:
    return '%s IN (%s)' % (column, ', '.join("'%s'" % v for v in values))


# NOTE: MySQL's DATETIME keeps whole seconds unless told otherwise;
# heartbeats, leases and Nova events compare times closer than that.
PRECISE_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6),
                                              'mysql', 'mariadb')


class Base(orm.DeclarativeBase):
    metadata = sa.MetaData(naming_convention={
        'pk': 'pk_%(table_name)s',
        'fk': 'fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s',
        'uq': 'uniq_%(table_name)s0%(column_0_N_name)s',
        'ix': 'ix_%(table_name)s_%(column_0_N_name)s',
        'ck': 'ck_%(table_name)s_%(constraint_name)s',
    })


class Instance(Base):
    """A protected server: where it runs, how it is doing, its newest point.

    ``newest_restore_point_*`` and ``last_sequence`` are denormalised from
    ``restore_points`` so that the scheduler and the API read one row.
    """

    __tablename__ = 'instances'
    __table_args__ = (
        sa.CheckConstraint(_one_of('status', INSTANCE_STATUSES),
                           name='status'),
        sa.Index('ix_instances_project_id_status', 'project_id', 'status'),
        sa.Index('ix_instances_host_status', 'host', 'status'),
        sa.Index('ix_instances_status', 'status'),
    )

    uuid: orm.Mapped[str] = orm.mapped_column(sa.String(36),
                                              primary_key=True)
    project_id: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    host: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    status: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    # NOTE: names of stevedore plugins (snapshot policy, hypervisor driver).
    policy: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    driver: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    created_at: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)
    updated_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    deleted_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    # NOTE: the highest delta sequence ever recorded; it survives retention
    # so that a re-baseline can go on from it.
    last_sequence: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    newest_restore_point_id: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(36))
    newest_restore_point_at: orm.Mapped[datetime.datetime | None] = (
        orm.mapped_column(PRECISE_DATETIME))
    recovery_attempts: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    last_report_reason: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    last_report_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    cooldown_until: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    # NOTE: totals since the instance was first recorded, for the API's
    # Prometheus counters: retention removes restore points, not these.
    merges: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, default=0, server_default='0')
    shipped_bytes: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, default=0, server_default='0')
    stored_bytes: orm.Mapped[int] = orm.mapped_column(
        sa.BigInteger, default=0, server_default='0')
    # NOTE: the time (Nova's) of the newest Nova event applied to this
    # server: an older one arriving later is skipped (db/events.py).
    nova_event_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)


# NOTE: what list_instances returns: the columns of a row as a read-only
# tuple with attributes; plain attribute reads, where a SQLAlchemy Row's
# cost ~1 us each (13 per server in an API list of hundreds).
InstanceRecord = collections.namedtuple(
    'InstanceRecord', [column.key for column in Instance.__table__.columns])


class RestorePoint(Base):
    """One durable restore point; its manifest in the store is the truth."""

    __tablename__ = 'restore_points'
    __table_args__ = (
        sa.UniqueConstraint('instance_uuid', 'number',
                            name='uniq_restore_points0instance_uuid0number'),
        sa.UniqueConstraint(
            'instance_uuid', 'delta_sequence',
            name='uniq_restore_points0instance_uuid0delta_sequence'),
    )

    id: orm.Mapped[str] = orm.mapped_column(sa.String(36), primary_key=True)
    instance_uuid: orm.Mapped[str] = orm.mapped_column(
        sa.String(36), sa.ForeignKey('instances.uuid'))
    number: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    delta_sequence: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    # NOTE: no foreign key: retention removes parents of kept points.
    parent_id: orm.Mapped[str | None] = orm.mapped_column(sa.String(36))
    created_at: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)
    # NOTE: when the agent asked for the snapshot (the point in time the
    # data is of), by the agent's clock; null when unknown (older agents,
    # a database rebuilt from the store).
    taken_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    virtual_size: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    chunk_size: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    changed_bytes: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    new_chunks: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    new_bytes: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    manifest_key: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    consistency: orm.Mapped[str] = orm.mapped_column(
        sa.String(16), default=statuses.Consistency.CRASH,
        server_default=statuses.Consistency.CRASH.value)
    """ha_snapshot.statuses.Consistency: 'crash' or 'filesystem'."""
    memory_state: orm.Mapped[bool] = orm.mapped_column(
        sa.Boolean, default=False, server_default='0')
    """The store holds the VM's memory state of the same instant
    (ha_snapshot/storage/memory.py): a restart resumes instead of booting."""
    disks: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    """JSON: the disks the point covers (ha_snapshot/disk_layout.py); null
    for the root disk alone."""


class Recovery(Base):
    """One recovery attempt of an instance and how far it got."""

    __tablename__ = 'recoveries'
    __table_args__ = (
        sa.CheckConstraint(_one_of('state', RECOVERY_STATES), name='state'),
        sa.Index('ix_recoveries_instance_uuid', 'instance_uuid'),
        # NOTE: self-healing looks for requested/running recoveries.
        sa.Index('ix_recoveries_state', 'state'),
        sa.Index('ix_recoveries_host_failure_id', 'host_failure_id'),
    )

    id: orm.Mapped[str] = orm.mapped_column(sa.String(36), primary_key=True)
    instance_uuid: orm.Mapped[str] = orm.mapped_column(
        sa.String(36), sa.ForeignKey('instances.uuid'))
    action: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    state: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    step: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    reason: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    restore_point_id: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(36))
    attempt: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    created_at: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)
    updated_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    started_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    finished_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    error: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    host_failure_id: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(36))
    """The host failure whose evacuation started it (else null)."""


class Agent(Base):
    """A compute-host agent, as last heard from."""

    __tablename__ = 'agents'

    host: orm.Mapped[str] = orm.mapped_column(sa.String(255),
                                              primary_key=True)
    version: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    created_at: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)
    last_seen: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)


class Manager(Base):
    """One incarnation of a manager replica: a process on ``host`` since
    ``started_at``; a restart is a new row (a new ``id``).

    ``heartbeat_at`` and the other times come from the database server's
    clock (ha_snapshot.db.membership), never from the replicas' own.
    """

    __tablename__ = 'managers'
    __table_args__ = (
        sa.Index('ix_managers_host', 'host'),
        sa.Index('ix_managers_heartbeat_at', 'heartbeat_at'),
    )

    id: orm.Mapped[str] = orm.mapped_column(sa.String(36), primary_key=True)
    host: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    pid: orm.Mapped[int | None] = orm.mapped_column(sa.Integer)
    version: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    started_at: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)
    heartbeat_at: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)
    # NOTE: set by a clean stop: the replica is gone before it is missed.
    stopped_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    # NOTE: what this incarnation did since it registered (JSON object of
    # counter name -> total, manager.replica_counters), written with each
    # heartbeat; NULL before its first.
    counters: orm.Mapped[str | None] = orm.mapped_column(sa.Text)


class Lease(Base):
    """Exclusive work (``key``, e.g. ``recovery:<instance>``) and who holds
    it until when. ``generation`` grows by one at every acquisition: a
    write checks it (fencing), so a holder that lost the lease cannot
    write any more. A released lease has no owner."""

    __tablename__ = 'leases'

    key: orm.Mapped[str] = orm.mapped_column(sa.String(255),
                                             primary_key=True)
    # NOTE: a Manager.id (an incarnation), not a host: a restarted replica
    # holds none of its previous life's leases.
    owner: orm.Mapped[str | None] = orm.mapped_column(sa.String(36))
    generation: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    acquired_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    expires_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)


class HostFailure(Base):
    """A compute host found failed (or a partition of the mirror network,
    ``host`` = ``*``) and what was done about it: when it was detected
    (its agent went silent), confirmed (Nova reported it down), fenced
    (by ``fencing_driver``; ``result`` says how) and closed (it came
    back, or the partition ended). ``state``: confirmed, fenced,
    fence_failed, evacuating, evacuated, evacuation_failed, returned,
    partition, partition_ended; ``evacuation``: what the evacuation of
    its protected servers did, ``evacuated_at``: when it ended. Open
    while ``closed_at`` is null; ``open_host`` is the host while open,
    null once closed: its unique index allows one open row per host."""

    __tablename__ = 'host_failures'
    __table_args__ = (
        sa.Index('ix_host_failures_host_closed_at', 'host', 'closed_at'),
        sa.Index('uniq_host_failures0open_host', 'open_host', unique=True),
    )

    id: orm.Mapped[str] = orm.mapped_column(sa.String(36), primary_key=True)
    host: orm.Mapped[str] = orm.mapped_column(sa.String(255))
    state: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    reason: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    detected_at: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)
    confirmed_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    fenced_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    closed_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    updated_at: orm.Mapped[datetime.datetime] = orm.mapped_column(
        PRECISE_DATETIME)
    fencing_driver: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(64))
    fence_attempts: orm.Mapped[int] = orm.mapped_column(
        sa.Integer, default=0, server_default='0')
    result: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    error: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    evacuated_at: orm.Mapped[datetime.datetime | None] = orm.mapped_column(
        PRECISE_DATETIME)
    evacuation: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    open_host: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
