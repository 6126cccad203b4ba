"""Restore points record the disks they cover.

Revision ID: c8a4f1e9d2b7
Revises: b5d8e2f6a193
Create Date: 2026-12-07

``restore_points.disks`` is the JSON list of the disks a multi-disk
restore point covers (target, role, offset and size of each, see
ha_snapshot/disk_layout.py), as its manifest has them. Null: the root
disk alone, as every existing row.
"""

from alembic import op
import sqlalchemy as sa

revision = 'c8a4f1e9d2b7'
down_revision = 'b5d8e2f6a193'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('restore_points', sa.Column('disks', sa.Text(),
                                              nullable=True))
