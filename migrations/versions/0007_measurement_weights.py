"""the weights of k-domain mixes per pre-training source and fine-tuning set, on measurements
and on the trajectory tasks of listed mixes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows measured before this revision have none: their ratio alone says the mix.
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weights", sa.JSON(), nullable=True))
    with op.batch_alter_table("sweep_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weights", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweep_tasks", schema=None) as batch_op:
        batch_op.drop_column("weights")
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.drop_column("weights")
