"""Manager replicas and leases: the managers and leases tables.

Revision ID: 3f7b9e2a6d14
Revises: 8d4f1a6c2b97
Create Date: 2026-12-07

``managers`` holds one row per incarnation of a manager replica and its
latest heartbeat; ``leases`` holds exclusive work, its holder, its expiry
and its fencing generation. Both start empty. Times have microseconds on
MySQL too (DATETIME(6)).
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = '3f7b9e2a6d14'
down_revision = '8d4f1a6c2b97'
branch_labels = None
depends_on = None


def _time() -> sa.types.TypeEngine:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mysql',
                                      'mariadb')


def upgrade() -> None:
    op.create_table(
        'managers',
        sa.Column('id', sa.String(36), nullable=False),
        sa.Column('host', sa.String(255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=True),
        sa.Column('version', sa.String(64), nullable=True),
        sa.Column('started_at', _time(), nullable=False),
        sa.Column('heartbeat_at', _time(), nullable=False),
        sa.Column('stopped_at', _time(), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_managers'),
    )
    op.create_index('ix_managers_host', 'managers', ['host'])
    op.create_index('ix_managers_heartbeat_at', 'managers', ['heartbeat_at'])

    op.create_table(
        'leases',
        sa.Column('key', sa.String(255), nullable=False),
        sa.Column('owner', sa.String(36), nullable=True),
        sa.Column('generation', sa.BigInteger(), nullable=False),
        sa.Column('acquired_at', _time(), nullable=True),
        sa.Column('expires_at', _time(), nullable=True),
        sa.PrimaryKeyConstraint('key', name='pk_leases'),
    )
