"""Compute host failures in the database: :class:`HostFailures`.

The host monitor (ha_snapshot.manager.host_monitor) records here each
host it found failed and each fencing attempt's outcome; the API lists
the rows read-only. A row is open while ``closed_at`` is null: one open
row per host, which the database enforces (``open_host``, unique, is
the host while the row is open: :meth:`HostFailures.create` raises
HostFailureOpen for a second one). The monitor's leader is the only
writer, and its writes pass its leader lease's fence, so a replica that
lost the lead writes nothing. A partition of the mirror network is a
row of host ``*``.

May import the rest of ha_snapshot.db and ha_snapshot.exception.
"""

import uuid as uuid_mod

from oslo_db import exception as db_exc
import sqlalchemy as sa

from ha_snapshot.db import api as db_api
from ha_snapshot.db import models
from ha_snapshot import exception

PARTITION_HOST = '*'

# NOTE: the columns a monitor may set after the row is made.
_UPDATABLE = ('state', 'reason', 'confirmed_at', 'fenced_at', 'closed_at',
              'fencing_driver', 'fence_attempts', 'result', 'error',
              'evacuated_at', 'evacuation')


def _check_columns(values: dict) -> None:
    bad = set(values) - set(_UPDATABLE)
    if bad:
        raise exception.HaSnapshotException(
            'Unknown host failure columns: %s' % ', '.join(sorted(bad)))


class HostFailures:
    """The ``host_failures`` rows of a :class:`db_api.Database`."""

    def __init__(self, db: db_api.Database):
        self.db = db

    @db_api._retried
    def create(self, host: str, state: str, *, detected_at, reason=None,
               fence=None, **values):
        """A new open row; ``values`` among the updatable columns.

        HostFailureOpen when ``host`` has an open row already.
        """
        row_cls = models.HostFailure
        _check_columns(values)
        try:
            with self.db._writer() as session:
                db_api._fenced(session, fence)
                row = row_cls(id=str(uuid_mod.uuid4()), host=host,
                              state=state, reason=reason,
                              detected_at=detected_at,
                              updated_at=self.db._now(), fence_attempts=0)
                for key, value in values.items():
                    setattr(row, key, value)
                row.open_host = host if row.closed_at is None else None
                session.add(row)
                session.flush()
                return row
        except db_exc.DBDuplicateEntry:
            raise exception.HostFailureOpen(host=host) from None

    @db_api._retried
    def update(self, failure_id: str, *, fence=None, **values):
        row_cls = models.HostFailure
        _check_columns(values)
        with self.db._writer() as session:
            db_api._fenced(session, fence)
            row = session.get(row_cls, failure_id)
            if row is None:
                raise exception.HostFailureNotFound(id=failure_id)
            for key, value in values.items():
                setattr(row, key, value)
            if row.closed_at is not None:
                row.open_host = None
            row.updated_at = self.db._now()
            session.flush()
            return row

    @db_api._retried
    def get(self, failure_id: str):
        """One row; HostFailureNotFound."""
        with self.db._reader() as session:
            row = session.get(models.HostFailure, failure_id)
        if row is None:
            raise exception.HostFailureNotFound(id=failure_id)
        return row

    @db_api._retried
    def open(self) -> dict:
        """host -> its open row (partition rows under ``*``)."""
        row_cls = models.HostFailure
        with self.db._reader() as session:
            rows = session.execute(
                sa.select(row_cls).where(row_cls.closed_at.is_(None))
                .order_by(row_cls.detected_at)).scalars()
            return {row.host: row for row in rows}

    @db_api._retried
    def list(self, host: str | None = None, *, open_only: bool = False,
             limit: int | None = None) -> list:
        """Rows, newest detection first."""
        row_cls = models.HostFailure
        query = sa.select(row_cls).order_by(row_cls.detected_at.desc(),
                                            row_cls.id)
        if host is not None:
            query = query.where(row_cls.host == host)
        if open_only:
            query = query.where(row_cls.closed_at.is_(None))
        if limit is not None:
            query = query.limit(limit)
        with self.db._reader() as session:
            return list(session.execute(query).scalars())

    @db_api._retried
    def evacuation_counts(self) -> dict:
        """Recoveries started by host evacuations, by state."""
        rec = models.Recovery
        query = (sa.select(rec.state, sa.func.count())
                 .where(rec.host_failure_id.is_not(None))
                 .group_by(rec.state))
        with self.db._reader() as session:
            return dict(session.execute(query).all())
