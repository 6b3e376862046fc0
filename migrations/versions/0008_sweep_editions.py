"""sweep editions: a reopened sweep's next final state is delivered again (deliveries keyed by
sweep, channel and edition)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every sweep and delivery stored before this revision is of the first edition: a sweep
    # reopened before it was delivered once, at its first end, and keeps that row.
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("edition", sa.Integer(), server_default="1", nullable=False))

    with op.batch_alter_table("sweep_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("edition", sa.Integer(), server_default="1", nullable=False))
        batch_op.drop_constraint("uq_sweep_deliveries_sweep_channel", type_="unique")
        batch_op.create_unique_constraint(
            "uq_sweep_deliveries_sweep_channel_edition", ["sweep_id", "channel", "edition"]
        )


def downgrade() -> None:
    # The old key holds one row per (sweep, channel): keep the newest edition's, the delivery of
    # the answer the sweep has now.
    op.execute(
        "DELETE FROM sweep_deliveries WHERE edition < ("
        "SELECT max(newer.edition) FROM sweep_deliveries AS newer "
        "WHERE newer.sweep_id = sweep_deliveries.sweep_id "
        "AND newer.channel = sweep_deliveries.channel)"
    )
    with op.batch_alter_table("sweep_deliveries", schema=None) as batch_op:
        batch_op.drop_constraint("uq_sweep_deliveries_sweep_channel_edition", type_="unique")
        batch_op.create_unique_constraint(
            "uq_sweep_deliveries_sweep_channel", ["sweep_id", "channel"]
        )
        batch_op.drop_column("edition")

    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("edition")
