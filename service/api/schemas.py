"""Response models of the API. Requests use :class:`service.spec.SweepSpec` directly."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from service.db.models import Measurement, Sweep, SweepState, SweepTask, TrajectoryPoint
from service.spec import SetForecast, SweepSpec, finite


def _utc(moment: datetime | None) -> datetime | None:
    # The database stores naive UTC; say so on the wire.
    return moment.replace(tzinfo=UTC) if moment is not None else None


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

    @classmethod
    def from_row(cls, sweep: Sweep) -> Progress:
        """Progress of a stored sweep."""
        spent = finite(sweep.compute_seconds) or 0.0
        eta: float | None = None
        stopped = sweep.state in (SweepState.failed, SweepState.cancelled)
        if sweep.tasks_done > 0 and not stopped:
            left = max(sweep.tasks_total - sweep.tasks_done, 0)
            eta = spent / sweep.tasks_done * left
        return cls(
            tasks_total=sweep.tasks_total,
            tasks_done=sweep.tasks_done,
            forwards=sweep.forwards,
            backwards=sweep.backwards,
            optimizer_steps=sweep.optimizer_steps,
            compute_seconds=spent,
            eta_seconds=eta,
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

    @classmethod
    def from_row(cls, sweep: Sweep) -> SweepOut:
        """The API's view of a stored sweep."""
        return cls(
            id=sweep.id,
            state=sweep.state,
            created_at=_utc(sweep.created_at) or sweep.created_at,
            updated_at=_utc(sweep.updated_at) or sweep.updated_at,
            started_at=_utc(sweep.started_at),
            finished_at=_utc(sweep.finished_at),
            spec=SweepSpec.model_validate(sweep.spec),
            progress=Progress.from_row(sweep),
            error=sweep.error,
            cancel_requested=sweep.cancel_requested,
            study_name=sweep.study_name,
        )


class SweepPage(BaseModel):
    """One page of sweeps, newest first."""

    items: list[SweepOut]
    next_cursor: str | None = Field(
        description="Pass as 'cursor' for the next page; null on the last page."
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

    @classmethod
    def from_row(cls, row: Measurement) -> TrialOut:
        """The API's view of a stored measurement."""
        return cls(
            ratio=row.ratio,
            eval_set=row.eval_set,
            role=row.role,
            status=row.status,
            eta_c=finite(row.eta_c),
            eta_c_low=finite(row.eta_c_low),
            eta_c_high=finite(row.eta_c_high),
            sharpness=finite(row.sharpness),
            spread=finite(row.spread),
            loss=finite(row.loss),
            loss_change=finite(row.loss_change),
            forwards=row.forwards,
            batches=row.batches,
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

    @classmethod
    def from_row(cls, row: TrajectoryPoint) -> TrajectoryPointOut:
        """The API's view of a stored point."""
        eta = finite(row.eta_c)
        return cls(
            step=row.step,
            lr=row.lr,
            eval_set=row.eval_set,
            role=row.role,
            status=row.status,
            loss=finite(row.loss),
            drift=finite(row.drift),
            eta_c=eta,
            eta_c_low=finite(row.eta_c_low),
            eta_c_high=finite(row.eta_c_high),
            sharpness=2.0 / eta if eta else None,
            loss_change=finite(row.loss_change),
        )


class RatioTrajectory(BaseModel):
    """One ratio's trajectory: its state, its points so far and, once done, its forecast."""

    ratio: float | None
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

    @classmethod
    def from_rows(
        cls, sweep: Sweep, tasks: list[SweepTask], points: list[TrajectoryPoint]
    ) -> TrajectoriesOut:
        """The API's view of a sweep's trajectory tasks and points."""
        spec = SweepSpec.model_validate(sweep.spec)
        by_task: dict[int, list[TrajectoryPointOut]] = {}
        for row in points:
            by_task.setdefault(row.task_id, []).append(TrajectoryPointOut.from_row(row))
        return cls(
            sweep_id=sweep.id,
            planned_steps=spec.planned_steps,
            tolerance=spec.tolerance,
            steps=spec.trajectory.steps if spec.trajectory else None,
            measure_every=spec.trajectory.measure_every if spec.trajectory else None,
            ratios=[
                RatioTrajectory(
                    ratio=task.ratio,
                    state=task.state.value,
                    pruned=task.pruned,
                    steps_done=task.steps_done,
                    points=by_task.get(task.id, []),
                    forecast=[SetForecast.model_validate(f) for f in task.forecast or []],
                )
                for task in tasks
            ],
        )


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
