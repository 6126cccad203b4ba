"""Run the database migrations from code: ``upgrade``, ``version``, ``check``.

The alembic scripts live in ``migrations/``; this module points alembic at
them and at a connection of a :class:`~ha_snapshot.db.api.Database` built
from ``conf``, so no alembic.ini is read. There are no downgrades (OpenStack
practice): restore a backup instead.

May import ha_snapshot.db.api and alembic.
"""

import contextlib
import os

from alembic import command
from alembic import config as alembic_config
from alembic import migration as alembic_migration
from alembic import script as alembic_script

from ha_snapshot import exception
from ha_snapshot.db import api

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'migrations')


def _alembic_config(connection=None) -> alembic_config.Config:
    config = alembic_config.Config()
    config.set_main_option('script_location', MIGRATIONS)
    config.attributes['connection'] = connection
    return config


@contextlib.contextmanager
def _database(conf, database):
    if database is not None:
        yield database
        return
    database = api.Database(conf)
    try:
        yield database
    finally:
        database.dispose()


def head() -> str:
    """The newest revision this code knows."""
    return alembic_script.ScriptDirectory.from_config(
        _alembic_config()).get_current_head()


def upgrade(conf, revision: str = 'head', *,
            database: api.Database | None = None) -> str | None:
    """Migrate the database of ``conf`` up to ``revision``; return where it
    is now. Safe to run again (``ha-snapshot-manage db sync``)."""
    with _database(conf, database) as db:
        with db.engine.begin() as connection:
            command.upgrade(_alembic_config(connection), revision)
        return version(conf, database=db)


def version(conf, *, database: api.Database | None = None) -> str | None:
    """The revision the database is at; None for an empty database."""
    with _database(conf, database) as db:
        with db.engine.connect() as connection:
            return alembic_migration.MigrationContext.configure(
                connection).get_current_revision()


def check(conf, *, database: api.Database | None = None) -> None:
    """Raise DatabaseNotUpToDate unless the database is at head (services
    call this at start-up rather than migrating on their own)."""
    with _database(conf, database) as db:
        current, newest = version(conf, database=db), head()
        if current != newest:
            raise exception.DatabaseNotUpToDate(
                url=db.engine.url.render_as_string(hide_password=True),
                current=current or '(empty)', head=newest)
