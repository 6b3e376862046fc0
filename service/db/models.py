"""Tables of sharpmix (SQLAlchemy 2, typed).

Optuna's RDB storage lives in the same database with its own tables (``studies``, ``trials``, ...);
our names never collide with them, and our migrations never touch them.

The states of sweeps, tasks and deliveries, and the table of their allowed moves, are the
contract's (``contract/states.py``); the columns here store them as short strings.

Tasks are of two kinds: ``measure`` (the first-step measurements of one ratio at theta0) and
``trajectory`` (real optimizer steps on one ratio's mix, with a point per evaluation set every few
steps). A trajectory's points are written while it runs, each write guarded by the lease; a worker
that takes a trajectory over starts it again from step 0 and replaces the points.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from contract.states import DeliveryState, SweepState, TaskKind, TaskState

# Deterministic constraint names, so migrations and models agree on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Naive UTC now: every timestamp in the database is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(kind: type[enum.Enum]) -> Enum:
    # Stored as short strings (no native enum types), so adding a state is a plain migration.
    return Enum(kind, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Tenant(Base):
    """A team that owns API keys and sweeps."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """A bearer key. Only its SHA-256 is stored; ``key_id`` (public prefix) finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")


class Sweep(Base):
    """One mix sweep: its validated request, its state and, once done, its recommendation."""

    __tablename__ = "sweeps"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_sweeps_tenant_idempotency_key"),
        Index("ix_sweeps_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    state: Mapped[SweepState] = mapped_column(_enum(SweepState), default=SweepState.queued)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_sha256: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    study_name: Mapped[str] = mapped_column(String(64))
    tasks_total: Mapped[int] = mapped_column(Integer, default=0)
    tasks_done: Mapped[int] = mapped_column(Integer, default=0)
    forwards: Mapped[int] = mapped_column(Integer, default=0)
    backwards: Mapped[int] = mapped_column(Integer, default=0)
    optimizer_steps: Mapped[int] = mapped_column(Integer, default=0)
    compute_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    recommendation: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Per direction set: {"tokens": n, "documents": m}, written by the first finished task.
    sources: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Issue 11, part 5 (reuse). What the measurements rest on (model files, data files, batch
    # shape, seed, optimizer), per component, written at submit; adding candidates later compares
    # it with the files as they are then. Null for sweeps stored before it.
    fingerprint: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Each accepted addition of candidates: {"idempotency_key", "ratios", "at"}, oldest first.
    additions: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    # 1 at submit, one more each time candidates reopen the succeeded sweep: the final state
    # and answer of each edition are delivered on their own (``sweep_deliveries.edition``).
    edition: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)

    tasks: Mapped[list[SweepTask]] = relationship(back_populates="sweep", order_by="SweepTask.slot")


class SweepTask(Base):
    """One unit of claimable work: the measurements of one ratio on every evaluation set."""

    __tablename__ = "sweep_tasks"
    __table_args__ = (
        UniqueConstraint("sweep_id", "slot", name="uq_sweep_tasks_sweep_slot"),
        Index("ix_sweep_tasks_state_heartbeat", "state", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind), default=TaskKind.measure)
    # Fixed for a candidate list; chosen by the Optuna sampler at claim time for a range.
    ratio: Mapped[float | None] = mapped_column(Float, default=None)
    state: Mapped[TaskState] = mapped_column(_enum(TaskState), default=TaskState.queued)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer, default=None)
    forwards: Mapped[int] = mapped_column(Integer, default=0)
    # Trajectory tasks: optimizer steps taken so far, and once done the forecast per evaluation set.
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    pruned: Mapped[bool] = mapped_column(Boolean, default=False)
    forecast: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    # A listed k-domain mix's share per set (its trajectory task steps on it); None: the ratio
    # says the mix.
    weights: Mapped[dict[str, float] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    sweep: Mapped[Sweep] = relationship(back_populates="tasks")


class Measurement(Base):
    """Critical sharpness of one ratio on one evaluation set, over the sweep's batches."""

    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint("task_id", "eval_set", name="uq_measurements_task_eval_set"),
        Index("ix_measurements_sweep_ratio", "sweep_id", "ratio"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("sweep_tasks.id", ondelete="CASCADE"))
    ratio: Mapped[float] = mapped_column(Float)
    eval_set: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    eta_c: Mapped[float | None] = mapped_column(Float, default=None)
    eta_c_low: Mapped[float | None] = mapped_column(Float, default=None)
    eta_c_high: Mapped[float | None] = mapped_column(Float, default=None)
    sharpness: Mapped[float | None] = mapped_column(Float, default=None)
    spread: Mapped[float | None] = mapped_column(Float, default=None)
    loss: Mapped[float] = mapped_column(Float)
    loss_change: Mapped[float | None] = mapped_column(Float, default=None)
    forwards: Mapped[int] = mapped_column(Integer)
    batches: Mapped[int] = mapped_column(Integer)
    per_batch: Mapped[list[Any]] = mapped_column(JSON)
    # Issue 11, part 2: [[rate, mean one-step loss change], ...] over the spec's rate grid.
    rate_loss_changes: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    # The measured mix: share per pre-training source and fine-tuning set (None: measured
    # before revision 0007, when a ratio alone said it).
    weights: Mapped[dict[str, float] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TrajectoryPoint(Base):
    """One evaluation set at one step of a trajectory task."""

    __tablename__ = "trajectory_points"
    __table_args__ = (
        UniqueConstraint("task_id", "step", "eval_set", name="uq_trajectory_points_task_step_set"),
        Index("ix_trajectory_points_sweep_ratio", "sweep_id", "ratio"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("sweep_tasks.id", ondelete="CASCADE"))
    ratio: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Float)
    eval_set: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    loss: Mapped[float] = mapped_column(Float)
    drift: Mapped[float] = mapped_column(Float)
    eta_c: Mapped[float | None] = mapped_column(Float, default=None)
    eta_c_low: Mapped[float | None] = mapped_column(Float, default=None)
    eta_c_high: Mapped[float | None] = mapped_column(Float, default=None)
    loss_change: Mapped[float | None] = mapped_column(Float, default=None)
    forwards: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SweepDelivery(Base):
    """One outbound delivery of a sweep's final state, kept until it is done (the outbox).

    A row is written once per (sweep, channel, edition) by the delivery loop when it first sees
    that edition of the sweep in a final state; its ``id`` is the idempotency id receivers see on
    every attempt. ``attempts_log`` holds one entry per attempt (time, HTTP status or error), so
    the API can show them.
    """

    __tablename__ = "sweep_deliveries"
    __table_args__ = (
        UniqueConstraint(
            "sweep_id", "channel", "edition", name="uq_sweep_deliveries_sweep_channel_edition"
        ),
        Index("ix_sweep_deliveries_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    # The sweep's edition this row delivers (``Sweep.edition`` when the loop queued it).
    edition: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(2048))
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState), default=DeliveryState.pending
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts_log: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
