"""Restore points: when the snapshot was taken.

Revision ID: f1c3a9d27e54
Revises: e7b2c4d81f06
Create Date: 2026-12-07

``restore_points.taken_at`` is when the agent asked for the snapshot the
restore point was made from: the point in time its data is of (every
guest write that ended before it is in it). ``created_at`` stays when
the restore point became durable. Agents send it from RPC 1.3 on; rows
of older agents, existing rows and rows rebuilt from the store keep null.
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = 'f1c3a9d27e54'
down_revision = 'e7b2c4d81f06'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('restore_points', sa.Column(
        'taken_at', sa.DateTime().with_variant(
            mysql.DATETIME(fsp=6), 'mysql', 'mariadb'), nullable=True))
