"""trajectory tasks and their points

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows get the defaults of the models: measurement tasks, no steps, nothing pruned.
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("optimizer_steps", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("sweep_tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "kind",
                sa.Enum(
                    "measure",
                    "trajectory",
                    name="taskkind",
                    native_enum=False,
                    length=16,
                ),
                nullable=False,
                server_default="measure",
            )
        )
        batch_op.add_column(
            sa.Column("steps_done", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("pruned", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("forecast", sa.JSON(), nullable=True))
    op.create_table(
        "trajectory_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.String(length=32), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("ratio", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("eval_set", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("drift", sa.Float(), nullable=False),
        sa.Column("eta_c", sa.Float(), nullable=True),
        sa.Column("eta_c_low", sa.Float(), nullable=True),
        sa.Column("eta_c_high", sa.Float(), nullable=True),
        sa.Column("loss_change", sa.Float(), nullable=True),
        sa.Column("forwards", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeps.id"],
            name=op.f("fk_trajectory_points_sweep_id_sweeps"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["sweep_tasks.id"],
            name=op.f("fk_trajectory_points_task_id_sweep_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trajectory_points")),
        sa.UniqueConstraint(
            "task_id", "step", "eval_set", name="uq_trajectory_points_task_step_set"
        ),
    )
    with op.batch_alter_table("trajectory_points", schema=None) as batch_op:
        batch_op.create_index(
            "ix_trajectory_points_sweep_ratio", ["sweep_id", "ratio"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("trajectory_points", schema=None) as batch_op:
        batch_op.drop_index("ix_trajectory_points_sweep_ratio")
    op.drop_table("trajectory_points")
    with op.batch_alter_table("sweep_tasks", schema=None) as batch_op:
        batch_op.drop_column("forecast")
        batch_op.drop_column("pruned")
        batch_op.drop_column("steps_done")
        batch_op.drop_column("kind")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("optimizer_steps")
