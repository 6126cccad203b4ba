"""Initial schema: instances, restore points, recoveries, agents.

Revision ID: 5c1e2d7a9f30
Revises:
Create Date: 2026-05-20

Downgrades are not supported (OpenStack practice): restore a backup.
"""

from alembic import op
import sqlalchemy as sa

revision = '5c1e2d7a9f30'
down_revision = None
branch_labels = None
depends_on = None

# NOTE: op.f(): the names are final; the naming convention of the models'
# metadata (which alembic applies here too) must not prefix them again.
# NOTE: frozen copies of the values in models.py at this revision; a later
# change to those lists needs its own migration.
_INSTANCE_STATUSES = ("'protecting', 'protected', 'paused', 'recovering', "
                      "'failed', 'deleted'")
_RECOVERY_STATES = "'requested', 'running', 'succeeded', 'failed'"


def upgrade() -> None:
    op.create_table(
        'instances',
        sa.Column('uuid', sa.String(36), nullable=False),
        sa.Column('project_id', sa.String(255), nullable=False),
        sa.Column('host', sa.String(255), nullable=True),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('policy', sa.String(64), nullable=True),
        sa.Column('driver', sa.String(64), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.Column('deleted_at', sa.DateTime(), nullable=True),
        sa.Column('last_sequence', sa.BigInteger(), nullable=True),
        sa.Column('newest_restore_point_id', sa.String(36), nullable=True),
        sa.Column('newest_restore_point_at', sa.DateTime(), nullable=True),
        sa.Column('recovery_attempts', sa.Integer(), nullable=False),
        sa.Column('last_report_reason', sa.Text(), nullable=True),
        sa.Column('last_report_at', sa.DateTime(), nullable=True),
        sa.Column('cooldown_until', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('uuid', name='pk_instances'),
        sa.CheckConstraint('status IN (%s)' % _INSTANCE_STATUSES,
                           name=op.f('ck_instances_status')),
    )
    op.create_index('ix_instances_project_id_status', 'instances',
                    ['project_id', 'status'])
    op.create_index('ix_instances_host_status', 'instances',
                    ['host', 'status'])
    op.create_index('ix_instances_status', 'instances', ['status'])

    op.create_table(
        'restore_points',
        sa.Column('id', sa.String(36), nullable=False),
        sa.Column('instance_uuid', sa.String(36), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('delta_sequence', sa.BigInteger(), nullable=False),
        sa.Column('parent_id', sa.String(36), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('virtual_size', sa.BigInteger(), nullable=False),
        sa.Column('chunk_size', sa.Integer(), nullable=False),
        sa.Column('changed_bytes', sa.BigInteger(), nullable=False),
        sa.Column('new_chunks', sa.Integer(), nullable=False),
        sa.Column('new_bytes', sa.BigInteger(), nullable=False),
        sa.Column('manifest_key', sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_restore_points'),
        sa.ForeignKeyConstraint(
            ['instance_uuid'], ['instances.uuid'],
            name='fk_restore_points_instance_uuid_instances'),
        sa.UniqueConstraint('instance_uuid', 'number',
                            name='uniq_restore_points0instance_uuid0number'),
        sa.UniqueConstraint(
            'instance_uuid', 'delta_sequence',
            name='uniq_restore_points0instance_uuid0delta_sequence'),
    )

    op.create_table(
        'recoveries',
        sa.Column('id', sa.String(36), nullable=False),
        sa.Column('instance_uuid', sa.String(36), nullable=False),
        sa.Column('action', sa.String(64), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('step', sa.String(64), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('restore_point_id', sa.String(36), nullable=True),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_recoveries'),
        sa.ForeignKeyConstraint(
            ['instance_uuid'], ['instances.uuid'],
            name='fk_recoveries_instance_uuid_instances'),
        sa.CheckConstraint('state IN (%s)' % _RECOVERY_STATES,
                           name=op.f('ck_recoveries_state')),
    )
    op.create_index('ix_recoveries_instance_uuid', 'recoveries',
                    ['instance_uuid'])
    op.create_index('ix_recoveries_state', 'recoveries', ['state'])

    op.create_table(
        'agents',
        sa.Column('host', sa.String(255), nullable=False),
        sa.Column('version', sa.String(64), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('last_seen', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('host', name='pk_agents'),
    )
