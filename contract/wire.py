"""The API's response models: what the HTTP client reads, with no database behind them.

The request is :class:`contract.spec.SweepSpec` itself. The API fills these models from its rows
(``service/api/schemas.py``); the client (``service/client.py``) parses them back. Non-finite
numbers travel as null (JSON has no infinity).
"""

from __future__ import annotations

import math
from datetime import datetime

from pydantic import BaseModel, Field

from contract.recommendation import SetForecast
from contract.spec import SweepSpec
from contract.states import DeliveryState, SweepState


def finite(value: float | None) -> float | None:
    """``value`` when finite, else None (JSON has no infinity)."""
    return value if value is not None and math.isfinite(value) else None


class Progress(BaseModel):
    """How far a sweep has got, and what it has cost."""

    tasks_total: int = Field(
        description="Tasks to run: one first-step measurement per candidate ratio (or trial of "
        "a range), plus one trajectory per ratio that gets one."
    )
    tasks_done: int
    forwards: int = Field(description="Forward passes spent so far.")
    backwards: int = Field(description="Backward passes spent so far.")
    optimizer_steps: int = Field(description="Real optimizer steps the trajectories took.")
    compute_seconds: float = Field(description="Worker compute time spent so far.")
    eta_seconds: float | None = Field(
        description="Estimated compute time left: mean time per finished task times the tasks "
        "left. Null before the first task finishes, and once the sweep failed or was cancelled."
    )


class SweepOut(BaseModel):
    """A sweep: its request, its state and its progress."""

    id: str
    state: SweepState
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: SweepSpec
    progress: Progress
    error: str | None = Field(description="Why the sweep failed, when it did.")
    cancel_requested: bool
    study_name: str = Field(description="The sweep's Optuna study, in the same database.")
    edition: int = Field(
        default=1,  # a server from before editions sends none: its sweeps were never reopened
        ge=1,
        description="1, plus one each time added candidates reopened the succeeded sweep; each "
        "edition's final state is delivered (webhook, MLflow) on its own.",
    )


class SweepPage(BaseModel):
    """One page of sweeps, newest first."""

    items: list[SweepOut]
    next_cursor: str | None = Field(
        description="Pass as 'cursor' for the next page; null on the last page."
    )


class RateLossChange(BaseModel):
    """The one-step loss change of one (ratio, evaluation set) at one rate of the grid."""

    learning_rate: float = Field(description="A rate of the spec's grid.")
    loss_change: float | None = Field(
        description="Mean one-step loss change over the batches at that rate (null: not finite)."
    )


class TrialOut(BaseModel):
    """One ratio measured on one evaluation set. Non-finite numbers are null."""

    ratio: float
    eval_set: str = Field(description="The evaluation set's 'name' in the spec.")
    role: str = Field(description="pretraining, finetuning, retention or target.")
    status: str
    eta_c: float | None = Field(description="Critical learning rate.")
    eta_c_low: float | None = Field(description="Lower confidence bound of eta_c.")
    eta_c_high: float | None = Field(description="Upper confidence bound of eta_c.")
    sharpness: float | None = Field(description="Critical sharpness 2 / eta_c.")
    spread: float | None = Field(description="Spread of eta_c over the batches.")
    loss: float | None = Field(description="Loss before the step.")
    loss_change: float | None = Field(description="One-step loss change at the planned rate.")
    forwards: int
    batches: int
    rate_loss_changes: list[RateLossChange] | None = Field(
        default=None,
        description="With a rate grid in the spec: the one-step loss change at each of its "
        "rates, ascending (null without a grid).",
    )
    weights: dict[str, float] | None = Field(
        default=None,
        description="The measured mix: share per pre-training source and fine-tuning set "
        "('ratio' is their pre-training total); null for rows measured before it was recorded.",
    )


class TrajectoryPointOut(BaseModel):
    """One evaluation set at one step of a trajectory. Non-finite numbers are null."""

    step: int = Field(description="Optimizer steps taken before this measurement.")
    lr: float = Field(description="The planned schedule's rate at this step.")
    eval_set: str
    role: str
    status: str
    loss: float | None = Field(description="Held-out loss at this step.")
    drift: float | None = Field(description="Loss minus its value at step 0 (nats).")
    eta_c: float | None = Field(description="Critical rate along the optimizer's next update.")
    eta_c_low: float | None
    eta_c_high: float | None
    sharpness: float | None = Field(description="Relative critical sharpness 2 / eta_c.")
    loss_change: float | None = Field(description="One-step loss change at the current rate.")


class RatioTrajectory(BaseModel):
    """One ratio's trajectory: its state, its points so far and, once done, its forecast."""

    ratio: float | None
    weights: dict[str, float] | None = Field(
        default=None,
        description="A listed k-domain mix's share per set ('ratio' is their pre-training total).",
    )
    state: str = Field(description="queued, running, done, failed or cancelled.")
    pruned: bool = Field(description="Stopped early: it had clearly left the basin.")
    steps_done: int
    points: list[TrajectoryPointOut]
    forecast: list[SetForecast] = Field(description="Per evaluation set, at planned_steps.")


class TrajectoriesOut(BaseModel):
    """Every trajectory of a sweep."""

    sweep_id: str
    planned_steps: int
    tolerance: float
    steps: int | None = Field(description="K: steps each trajectory takes (null: none asked).")
    measure_every: int | None
    ratios: list[RatioTrajectory]


class Message(BaseModel):
    """An error the client can act on (401, 404, 409, 413, 503)."""

    detail: str


class FieldError(BaseModel):
    """Where a request value is wrong and why, as FastAPI reports validation errors."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationMessage(BaseModel):
    """422: the request's values at fault."""

    detail: list[FieldError]


class Readiness(BaseModel):
    """The database answers and is migrated to the revision this server needs."""

    status: str
    revision: str


class DeliveryAttempt(BaseModel):
    """One try of a delivery."""

    attempt: int
    at: datetime
    ok: bool
    status: int | None = Field(description="The receiver's HTTP status, when it answered.")
    error: str | None = Field(description="What went wrong, when it did.")
    seconds: float


class DeliveryOut(BaseModel):
    """A webhook POST, an MLflow run or the Optuna annotation of a finished sweep's edition, with
    every attempt so far."""

    id: str = Field(
        description="Idempotency id: the same on every attempt of this delivery; each edition's "
        "delivery has its own."
    )
    channel: str = Field(description="'webhook', 'optuna' or 'mlflow'.")
    edition: int = Field(
        description="The sweep's edition delivered: 1 for its first final state, one more for "
        "each time added candidates reopened it."
    )
    event: str = Field(description="sweep.succeeded, sweep.failed or sweep.cancelled.")
    target: str = Field(
        description="The URL posted to, the Optuna study's name, or the MLflow tracking URI."
    )
    state: DeliveryState = Field(
        description="pending (due again at next_attempt_at), delivered, failed (attempts spent "
        "or target refused), skipped (no target configured) or superseded (not sent: added "
        "candidates reopened the sweep first; its next edition is delivered)."
    )
    attempts: int
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next.")
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    log: list[DeliveryAttempt]
