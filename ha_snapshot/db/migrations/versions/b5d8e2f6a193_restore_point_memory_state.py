"""Restore points record whether they carry the VM's memory state.

Revision ID: b5d8e2f6a193
Revises: e7b3c5a91f42
Create Date: 2026-12-07

``restore_points.memory_state`` is true when the store holds the VM's
memory state of the same instant as the disk (the ``qemu`` driver's
``[agent] memory_interval``): a restart from such a point resumes the
guest instead of booting it. Every existing row has none (false).
"""

from alembic import op
import sqlalchemy as sa

revision = 'b5d8e2f6a193'
down_revision = 'e7b3c5a91f42'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('restore_points', sa.Column(
        'memory_state', sa.Boolean(), nullable=False,
        server_default='0'))
