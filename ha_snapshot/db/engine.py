"""How the database layer meets oslo.db and SQLAlchemy: options, engine
hooks, and the naive-UTC times stored in every ``DateTime`` column.

May import ha_snapshot.exception only.
"""

import datetime
import os

import sqlalchemy as sa

from ha_snapshot import exception


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
    return options


def on_engine_create(engine) -> None:
    if engine.dialect.name != 'sqlite':
        return

    # NOTE: oslo.db starts sqlite transactions with a deferred BEGIN. Two of
    # them that read and then write deadlock at once ("database is locked",
    # the busy timeout is not used). BEGIN IMMEDIATE takes the write lock
    # first, so transactions queue on the busy timeout instead. SQLAlchemy
    # ignores insert=True for engine events, so this runs after oslo.db's
    # listener: undo its BEGIN (nothing has run since) and begin again.
    @sa.event.listens_for(engine, 'begin')
    def _begin_immediate(conn):
        if 'in_transaction' in conn.info:
            conn.exec_driver_sql('ROLLBACK')
        conn.exec_driver_sql('BEGIN IMMEDIATE')
        conn.info['in_transaction'] = True
