"""How the database layer meets oslo.db and SQLAlchemy: options, engine
hooks, what a transient error is, and the naive-UTC times stored in every
``DateTime`` column.

sqlite (the embedded default) serves one manager at 20 deltas/s for hours
only with: WAL (readers and the writer do not block each other; a commit
is one fsync of the log), a busy timeout on every connection (other
processes: the API, ``ha-snapshot-manage``), one writer at a time inside
the process (:func:`writer_lock`: the threads of the manager queue in
order on a lock instead of polling sqlite's busy handler, which is not
fair and let some wait past any timeout), write transactions that take
the write lock first (``BEGIN IMMEDIATE``) and read transactions that do
not (:data:`READ_ONLY`), and a retry of what is left (:func:`transient`).

May import ha_snapshot.exception only.
"""

import contextlib
import contextvars
import datetime
import os
import sqlite3
import threading

from oslo_db import exception as db_exc
import sqlalchemy as sa

from ha_snapshot import exception

READ_ONLY = contextvars.ContextVar('ha_snapshot_db_read_only', default=False)
"""True inside a read transaction: on sqlite it begins deferred (in WAL a
reader never waits for the writer), not ``BEGIN IMMEDIATE``."""

# NOTE: what sqlite says when another connection holds the lock past the
# busy timeout (SQLITE_BUSY) or a table is locked (SQLITE_LOCKED).
_SQLITE_BUSY = ('database is locked', 'database is busy',
                'database table is locked')


def to_datetime(value) -> datetime.datetime | None:
    """A naive UTC datetime from an epoch timestamp or any datetime."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(
                tzinfo=None)
        return value
    return datetime.datetime.fromtimestamp(
        value, datetime.timezone.utc).replace(tzinfo=None)


def to_timestamp(value: datetime.datetime) -> float:
    return value.replace(tzinfo=datetime.timezone.utc).timestamp()


def engine_options(conf) -> dict:
    options = dict(conf.database.items())
    url = options.get('connection')
    if not url:
        raise exception.ConfigurationError(
            reason='[database] connection is not set')
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as e:
        raise exception.ConfigurationError(
            reason='[database] connection is not a database URL (%s)' % e)
    path = parsed.database
    if parsed.get_backend_name() == 'sqlite' and path not in (
            None, '', ':memory:'):
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            # NOTE: else sqlite says only "unable to open database file".
            raise exception.ConfigurationError(
                reason='[database] connection names the sqlite file %s but '
                       'directory %s does not exist; create it or set '
                       'another connection' % (path, directory))
    # NOTE: sqlite checks foreign keys only when asked to.
    options['sqlite_fk'] = True
    # NOTE: oslo.db's time.sleep(0) at each connection check-in is for
    # eventlet's green threads; none here.
    options['thread_checkin'] = False
    # NOTE: ours, not oslo.db's: applied by on_engine_create.
    options.pop('sqlite_busy_timeout', None)
    return options


def is_sqlite(conf) -> bool:
    url = conf.database.connection or ''
    return url.startswith('sqlite')


def writer_lock(conf):
    """The lock every write transaction of one Database holds: a real one
    for sqlite (one writer at a time), none for a database server."""
    return threading.RLock() if is_sqlite(conf) else contextlib.nullcontext()


def transient(error: BaseException) -> bool:
    """Whether a database error is worth the same transaction again: a
    lock held too long, a deadlock, a lost connection."""
    if isinstance(error, (db_exc.DBDeadlock, db_exc.DBConnectionError)):
        return True
    inner = getattr(error, 'inner_exception', None) or error
    inner = getattr(inner, 'orig', None) or inner
    return (isinstance(inner, sqlite3.OperationalError)
            and any(text in str(inner) for text in _SQLITE_BUSY))


def on_engine_create(engine, busy_timeout: float = 60.0,
                     pool_size: int = 5) -> None:
    if engine.dialect.name != 'sqlite':
        return
    _keep_connections(engine, pool_size)

    @sa.event.listens_for(engine, 'connect')
    def _wal(dbapi_con, _record):
        # NOTE: the busy timeout first: switching to WAL takes the lock.
        # WAL persists in the file; an in-memory database stays 'memory'.
        dbapi_con.execute('PRAGMA busy_timeout = %d'
                          % int(busy_timeout * 1000))
        dbapi_con.execute('PRAGMA journal_mode = WAL')

    # NOTE: oslo.db starts sqlite transactions with a deferred BEGIN. Two of
    # them that read and then write deadlock at once ("database is locked",
    # the busy timeout is not used). BEGIN IMMEDIATE takes the write lock
    # first, so transactions queue on the busy timeout instead. SQLAlchemy
    # ignores insert=True for engine events, so this runs after oslo.db's
    # listener: undo its BEGIN (nothing has run since) and begin again.
    @sa.event.listens_for(engine, 'begin')
    def _begin_immediate(conn):
        if READ_ONLY.get():
            return
        if 'in_transaction' in conn.info:
            conn.exec_driver_sql('ROLLBACK')
        conn.exec_driver_sql('BEGIN IMMEDIATE')
        conn.info['in_transaction'] = True

    # NOTE: a pooled connection outlives its transactions: should one end
    # without a "commit" or "rollback" event (the pool's own reset fires
    # none), oslo.db's marker must not make the next one begin nothing.
    @sa.event.listens_for(engine, 'checkin')
    def _forget_transaction(_dbapi_con, record):
        if record is not None:
            record.info.pop('in_transaction', None)


def _keep_connections(engine, pool_size: int) -> None:
    """Pool the connections of a sqlite file.

    oslo.db puts sqlite files on a NullPool: every transaction opened the
    file, ran its PRAGMAs and closed it again, about half of the CPU of a
    short read (a list of 100 servers: 9 ms -> ...). A QueuePool keeps
    ``pool_size`` of them open; more are opened when more threads need one
    at once (no overflow limit: a thread never waits for a connection, as
    on a NullPool) and closed when they come back. The dialect already
    opens file databases with ``check_same_thread=False``. The listeners
    of the engine (oslo.db's and ours) move over with the pool's
    dispatcher; no pre-ping (a file does not drop a connection).
    """
    old = engine.pool
    if not isinstance(old, sa.pool.NullPool):
        return
    database = engine.url.database
    if not database or database == ':memory:' or 'mode=memory' in str(
            engine.url):
        return
    # NOTE: as QueuePool.recreate() builds its successor.
    engine.pool = sa.pool.QueuePool(
        old._creator, pool_size=pool_size, max_overflow=-1,
        recycle=old._recycle, echo=old.echo,
        logging_name=old._orig_logging_name,
        reset_on_return=old._reset_on_return, _dispatch=old.dispatch,
        dialect=old._dialect)
    old.dispose()
