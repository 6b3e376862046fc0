"""sweep fingerprint and additions (reuse), per-rate loss changes (rate grid)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # All nullable: sweeps stored before this revision have no fingerprint (adding candidates to
    # them is refused) and their measurements no rate grid.
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_loss_changes", sa.JSON(), nullable=True))

    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("additions", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("additions")
        batch_op.drop_column("fingerprint")

    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.drop_column("rate_loss_changes")
