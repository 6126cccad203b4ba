"""Instances: the time of the newest Nova event applied to each.

Revision ID: a4c7e1d09b52
Revises: 3f7b9e2a6d14
Create Date: 2026-12-07

``nova_event_at`` orders Nova's notifications of one server: an event
older than the one last applied is skipped, whichever manager thread or
replica handles it. Existing instances start with none (the next event
applies). Microseconds on MySQL too (DATETIME(6)).
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = 'a4c7e1d09b52'
down_revision = '3f7b9e2a6d14'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('instances', sa.Column(
        'nova_event_at',
        sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mysql',
                                   'mariadb'),
        nullable=True))
