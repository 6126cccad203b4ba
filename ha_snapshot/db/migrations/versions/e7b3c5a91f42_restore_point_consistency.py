"""Restore points record their consistency: 'crash' or 'filesystem'.

Revision ID: e7b3c5a91f42
Revises: f1c3a9d27e54
Create Date: 2026-12-07

``restore_points.consistency`` says whether a point was taken while the
guest agent held the guest's file systems frozen ('filesystem', an
application-consistent point) or not ('crash'). Every existing row was
taken without a freeze: they get 'crash' (the server default).
"""

from alembic import op
import sqlalchemy as sa

revision = 'e7b3c5a91f42'
down_revision = 'f1c3a9d27e54'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('restore_points', sa.Column(
        'consistency', sa.String(16), nullable=False,
        server_default='crash'))
