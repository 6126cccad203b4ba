"""Compute host failures: the host_failures table.

Revision ID: c81e5d2f4a07
Revises: c9e3f1a7b2d4
Create Date: 2026-12-07

One row per compute host found failed (or per partition of the mirror
network, host ``*``): when it was detected, confirmed, fenced and closed,
the fencing driver, its result or error. Starts empty. Times have
microseconds on MySQL too (DATETIME(6)).
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = 'c81e5d2f4a07'
down_revision = 'c9e3f1a7b2d4'
branch_labels = None
depends_on = None


def _time() -> sa.types.TypeEngine:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mysql',
                                      'mariadb')


def upgrade() -> None:
    op.create_table(
        'host_failures',
        sa.Column('id', sa.String(36), nullable=False),
        sa.Column('host', sa.String(255), nullable=False),
        sa.Column('state', sa.String(32), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('detected_at', _time(), nullable=False),
        sa.Column('confirmed_at', _time(), nullable=True),
        sa.Column('fenced_at', _time(), nullable=True),
        sa.Column('closed_at', _time(), nullable=True),
        sa.Column('updated_at', _time(), nullable=False),
        sa.Column('fencing_driver', sa.String(64), nullable=True),
        sa.Column('fence_attempts', sa.Integer(), server_default='0',
                  nullable=False),
        sa.Column('result', sa.Text(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_host_failures'),
    )
    op.create_index('ix_host_failures_host_closed_at', 'host_failures',
                    ['host', 'closed_at'])
