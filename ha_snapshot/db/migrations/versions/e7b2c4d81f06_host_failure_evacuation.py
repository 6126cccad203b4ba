"""Host failures: the evacuation's own outcome, one open row per host.

Revision ID: e7b2c4d81f06
Revises: d2a6f0c3e815
Create Date: 2026-12-07

``host_failures.evacuation`` holds what the evacuation of the host's
servers did (it wrote ``result`` before, over the fencing driver's
outcome, which ``result`` keeps now). ``host_failures.open_host`` is the
host while the row is open and null once it is closed; its unique index
makes "one open row per host" a constraint of the database, not only a
convention of the monitor (a unique index on a nullable column, which
PostgreSQL, MySQL/MariaDB and sqlite all allow, unlike a partial index).
Existing open rows: the newest per host gets ``open_host``; an older
open row of the same host (there should be none) is closed at upgrade.
"""

from alembic import op
import sqlalchemy as sa

revision = 'e7b2c4d81f06'
down_revision = 'd2a6f0c3e815'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('host_failures', sa.Column('evacuation', sa.Text(),
                                             nullable=True))
    op.add_column('host_failures', sa.Column('open_host', sa.String(255),
                                             nullable=True))
    table = sa.table('host_failures', sa.column('id', sa.String),
                     sa.column('host', sa.String),
                     sa.column('detected_at', sa.DateTime),
                     sa.column('closed_at', sa.DateTime),
                     sa.column('updated_at', sa.DateTime),
                     sa.column('open_host', sa.String))
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(table.c.id, table.c.host, table.c.updated_at)
        .where(table.c.closed_at.is_(None))
        .order_by(table.c.detected_at.desc(), table.c.id)).all()
    seen = set()
    for row in rows:
        if row.host in seen:
            bind.execute(table.update().where(table.c.id == row.id)
                         .values(closed_at=row.updated_at))
            continue
        seen.add(row.host)
        bind.execute(table.update().where(table.c.id == row.id)
                     .values(open_host=row.host))
    op.create_index('uniq_host_failures0open_host', 'host_failures',
                    ['open_host'], unique=True)
