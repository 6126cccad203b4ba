"""Times to the microsecond on MySQL and MariaDB.

Revision ID: c9e3f1a7b2d4
Revises: c9e4b7a15d28
Create Date: 2026-12-07

MySQL's ``DATETIME`` keeps whole seconds: a restore point's time, a
recovery's steps and an agent's last heartbeat were cut to the second
there (on PostgreSQL and sqlite they keep microseconds). A restore point
chosen by time, the order of restore points made within one second and
the RPO figures then came out up to a second off. Every time column
becomes ``DATETIME(6)`` on MySQL and MariaDB (the columns added since the
first schema already are); nothing changes on other databases.
"""

from alembic import op

revision = 'c9e3f1a7b2d4'
down_revision = 'c9e4b7a15d28'
branch_labels = None
depends_on = None

# (table, column, nullable): the DATETIME columns of the first schema.
COLUMNS = (
    ('instances', 'created_at', False),
    ('instances', 'updated_at', True),
    ('instances', 'deleted_at', True),
    ('instances', 'newest_restore_point_at', True),
    ('instances', 'last_report_at', True),
    ('instances', 'cooldown_until', True),
    ('restore_points', 'created_at', False),
    ('recoveries', 'created_at', False),
    ('recoveries', 'updated_at', True),
    ('recoveries', 'started_at', True),
    ('recoveries', 'finished_at', True),
    ('agents', 'created_at', False),
    ('agents', 'last_seen', False),
)


def upgrade() -> None:
    if op.get_bind().dialect.name not in ('mysql', 'mariadb'):
        return
    # NOTE: one ALTER TABLE per table, not per column: each rewrites its
    # table (and, on Galera, stalls the cluster while it runs).
    by_table = {}
    for table, column, nullable in COLUMNS:
        by_table.setdefault(table, []).append(
            'MODIFY %s DATETIME(6) %s'
            % (column, 'NULL' if nullable else 'NOT NULL'))
    for table, changes in by_table.items():
        op.execute('ALTER TABLE %s %s' % (table, ', '.join(changes)))
