"""alembic environment of the manager's database.

ha_snapshot.db.migration runs the migrations from code and hands this
module an open connection in ``config.attributes['connection']``. Run by the
``alembic`` command (for ``alembic -c ha_snapshot/db/alembic.ini revision
--autogenerate``), it connects to the ``sqlalchemy.url`` of that file
instead. Offline (SQL script) mode is not offered.
"""

from alembic import context
import sqlalchemy as sa

from ha_snapshot.db import models


def run_migrations(connection) -> None:
    context.configure(connection=connection,
                      target_metadata=models.Base.metadata,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise RuntimeError('offline migrations are not supported: run them '
                           'against a database (ha-snapshot-manage db sync)')
    connection = context.config.attributes.get('connection')
    if connection is not None:
        run_migrations(connection)
        return
    engine = sa.create_engine(context.config.get_main_option('sqlalchemy.url'))
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


main()
