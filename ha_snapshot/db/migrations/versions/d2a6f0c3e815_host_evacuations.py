"""Host evacuations: recoveries name the host failure that started them.

Revision ID: d2a6f0c3e815
Revises: c81e5d2f4a07
Create Date: 2026-12-07

``recoveries.host_failure_id`` is the ``host_failures`` row whose
evacuation started the recovery (null for every other recovery), so the
API lists a failed host's recoveries and the host monitor counts what is
left to do. ``host_failures.evacuated_at`` is when the last of them
ended. Existing rows keep nulls.
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = 'd2a6f0c3e815'
down_revision = 'c81e5d2f4a07'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('recoveries', sa.Column('host_failure_id', sa.String(36),
                                          nullable=True))
    op.create_index('ix_recoveries_host_failure_id', 'recoveries',
                    ['host_failure_id'])
    op.add_column('host_failures', sa.Column(
        'evacuated_at', sa.DateTime().with_variant(
            mysql.DATETIME(fsp=6), 'mysql', 'mariadb'), nullable=True))
