"""Each version's last Triton load: loaded, or failed (a failed promotion) with Triton's reason.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('serving_state', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('serving_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('serving_alias', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('serving_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('serving_at')
        batch_op.drop_column('serving_alias')
        batch_op.drop_column('serving_reason')
        batch_op.drop_column('serving_state')
