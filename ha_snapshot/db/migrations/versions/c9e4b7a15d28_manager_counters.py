"""Manager replicas: the work counters each writes with its heartbeat.

Revision ID: c9e4b7a15d28
Revises: a4c7e1d09b52
Create Date: 2026-12-07

``managers.counters`` holds what one incarnation did since it registered
(deltas merged, bytes shipped and stored, recoveries run) as a JSON
object, written with each heartbeat; ``GET /metrics`` and ``GET
/v1/managers`` read it. Existing rows start with none (read as zeros).
"""

from alembic import op
import sqlalchemy as sa

revision = 'c9e4b7a15d28'
down_revision = 'a4c7e1d09b52'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('managers', sa.Column('counters', sa.Text(),
                                        nullable=True))
