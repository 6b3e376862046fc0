"""The API's view of its rows: the contract's response models (``contract/wire.py``) filled from
the database. Requests use :class:`contract.spec.SweepSpec` directly."""

from __future__ import annotations

from datetime import UTC, datetime

from contract.recommendation import SetForecast
from contract.spec import SweepSpec
from contract.states import DeliveryState, SweepState
from contract.wire import (
    DeliveryAttempt,
    DeliveryOut,
    Progress,
    RateLossChange,
    RatioTrajectory,
    SweepOut,
    TrajectoriesOut,
    TrajectoryPointOut,
    TrialOut,
    finite,
)
from service.db.models import Measurement, Sweep, SweepDelivery, SweepTask, TrajectoryPoint


def _utc(moment: datetime | None) -> datetime | None:
    # The database stores naive UTC; say so on the wire.
    return moment.replace(tzinfo=UTC) if moment is not None else None


def progress_out(sweep: Sweep) -> Progress:
    """Progress of a stored sweep."""
    spent = finite(sweep.compute_seconds) or 0.0
    eta: float | None = None
    stopped = sweep.state in (SweepState.failed, SweepState.cancelled)
    if sweep.tasks_done > 0 and not stopped:
        left = max(sweep.tasks_total - sweep.tasks_done, 0)
        eta = spent / sweep.tasks_done * left
    return Progress(
        tasks_total=sweep.tasks_total,
        tasks_done=sweep.tasks_done,
        forwards=sweep.forwards,
        backwards=sweep.backwards,
        optimizer_steps=sweep.optimizer_steps,
        compute_seconds=spent,
        eta_seconds=eta,
    )


def sweep_out(sweep: Sweep, spec: SweepSpec | None = None) -> SweepOut:
    """The API's view of a stored sweep (``spec``: its spec, when already parsed)."""
    return SweepOut(
        id=sweep.id,
        state=sweep.state,
        created_at=_utc(sweep.created_at) or sweep.created_at,
        updated_at=_utc(sweep.updated_at) or sweep.updated_at,
        started_at=_utc(sweep.started_at),
        finished_at=_utc(sweep.finished_at),
        spec=spec if spec is not None else SweepSpec.model_validate(sweep.spec),
        progress=progress_out(sweep),
        error=sweep.error,
        cancel_requested=sweep.cancel_requested,
        study_name=sweep.study_name,
        edition=sweep.edition,
    )


def trial_out(row: Measurement) -> TrialOut:
    """The API's view of a stored measurement."""
    return TrialOut(
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
        rate_loss_changes=(
            [
                RateLossChange(learning_rate=lr, loss_change=finite(change))
                for lr, change in row.rate_loss_changes
            ]
            if row.rate_loss_changes is not None
            else None
        ),
        weights=row.weights,
    )


def point_out(row: TrajectoryPoint) -> TrajectoryPointOut:
    """The API's view of a stored trajectory point."""
    eta = finite(row.eta_c)
    return TrajectoryPointOut(
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


def trajectories_out(
    sweep: Sweep, tasks: list[SweepTask], points: list[TrajectoryPoint]
) -> TrajectoriesOut:
    """The API's view of a sweep's trajectory tasks and points."""
    spec = SweepSpec.model_validate(sweep.spec)
    by_task: dict[int, list[TrajectoryPointOut]] = {}
    for row in points:
        by_task.setdefault(row.task_id, []).append(point_out(row))
    return TrajectoriesOut(
        sweep_id=sweep.id,
        planned_steps=spec.planned_steps,
        tolerance=spec.tolerance,
        steps=spec.trajectory.steps if spec.trajectory else None,
        measure_every=spec.trajectory.measure_every if spec.trajectory else None,
        ratios=[
            RatioTrajectory(
                ratio=task.ratio,
                weights=task.weights,
                state=task.state.value,
                pruned=task.pruned,
                steps_done=task.steps_done,
                points=by_task.get(task.id, []),
                forecast=[SetForecast.model_validate(f) for f in task.forecast or []],
            )
            for task in tasks
        ],
    )


def delivery_out(row: SweepDelivery) -> DeliveryOut:
    """The API's view of a stored delivery."""
    pending = row.state == DeliveryState.pending
    return DeliveryOut(
        id=row.id,
        channel=row.channel,
        edition=row.edition,
        event=row.event,
        target=row.target,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=_utc(row.next_attempt_at) if pending else None,
        delivered_at=_utc(row.delivered_at),
        last_status=row.last_status,
        last_error=row.last_error,
        log=[DeliveryAttempt.model_validate(entry) for entry in row.attempts_log],
    )
