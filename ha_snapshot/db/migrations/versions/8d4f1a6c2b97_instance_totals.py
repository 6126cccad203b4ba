"""Instance totals: merges, bytes shipped and stored, for /metrics.

Revision ID: 8d4f1a6c2b97
Revises: 5c1e2d7a9f30
Create Date: 2026-11-26

Counters that retention does not lower (the restore points they count go
away). Existing instances start from zero.
"""

from alembic import op
import sqlalchemy as sa

revision = '8d4f1a6c2b97'
down_revision = '5c1e2d7a9f30'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for name in ('merges', 'shipped_bytes', 'stored_bytes'):
        op.add_column('instances', sa.Column(name, sa.BigInteger(),
                                             nullable=False,
                                             server_default='0'))
