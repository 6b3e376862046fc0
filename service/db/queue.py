"""The job queue: workers claim sweep tasks, heartbeat, and complete, hand back or fail them.

Every function opens and commits its own short transaction: no transaction is held while a worker
computes. A task is claimed in one statement: the oldest queued task of a live sweep, or a running
task whose heartbeat is older than the lease (its worker died), on PostgreSQL with
``FOR UPDATE SKIP LOCKED`` so concurrent workers never wait for or take the same row; on SQLite
every transaction starts with ``BEGIN IMMEDIATE`` (see ``engine.py``), which serialises claims.

This module is the one writer of sweep and task states (the API's cancel of an idle sweep calls
`end_sweep_without_commit` too). Every write a worker makes goes through the ownership guard
`_held_by` (``state = running`` and its ``worker_id``), and every state change takes its allowed
from-states from the transition table (``contract/states.py``): a worker that stalled past its
lease and came back finds its writes matching no row (the functions say so by returning False)
and can neither count a task twice nor fail the task or the sweep of the worker that took over.
The measurements are unique per (task, evaluation set) as a second line.

Before each claim a worker runs the housekeeping passes, each its own short transaction:
`requeue_stalled_tasks` (tasks of workers that stopped heartbeating), `end_abandoned_cancels`
(cancels whose worker died) and `sweeps_to_finish` (sweeps whose last worker died before
finalizing).

The recommendation is computed with no transaction open (`finalize_sweep`): the last task's
completion commits first, the worker then closes the task's Optuna trial, and only then is the
sweep finalized, in a short transaction of its own. A worker that dies between those steps
leaves a sweep whose tasks are all done; `sweeps_to_finish` finds it for the next worker.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

from sqlalchemy import ColumnElement, CursorResult, Result, case, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from contract.mix import Candidate
from contract.recommendation import Recommendation
from contract.results import (
    BatchResult,
    DoneTrial,
    MeasurementResult,
    PointResult,
    Status,
    TaskResult,
    TrajectoryResult,
    TrialRecords,
)
from contract.spec import Role, SweepSpec
from contract.states import SWEEP_FROM, TASK_FROM, SweepState, TaskKind, TaskState
from service.db._errors import database_errors
from service.db.models import Measurement, Sweep, SweepTask, TrajectoryPoint, utcnow

LIVE_SWEEP_STATES = (SweepState.queued, SweepState.running)


@dataclass(frozen=True)
class ClaimedTask:
    """A task a worker now owns, with what it needs to run it."""

    task_id: int
    sweep_id: str
    slot: int
    # The task's own candidate (a listed ratio, a trajectory's ratio or mix); None when the
    # study's ask picks it (a range, a search, or a listed mix: the sampler fixes it by slot).
    candidate: Candidate | None
    attempts: int
    optuna_trial_number: int | None
    study_name: str
    spec: SweepSpec
    kind: TaskKind = TaskKind.measure
    # What the sweep's measurements rest on (see service/fingerprint.py), None for older sweeps.
    fingerprint: dict[str, str] | None = None


class Heartbeat(enum.StrEnum):
    """What a heartbeat learned."""

    ok = "ok"
    lost = "lost"  # another worker owns the task now (our lease ran out)
    cancel = "cancel"  # the user asked to cancel the sweep


class Finalizer(Protocol):
    """Worker code that turns a finished sweep's rows into its recommendation."""

    def __call__(
        self,
        spec: SweepSpec,
        measurements: list[Measurement],
        *,
        trajectories: Sequence[SweepTask] = (),
    ) -> Recommendation: ...


# Worker code that picks, from the quick screen's rows, the ratios a ``ratios: auto`` sweep
# spends its trajectories on.
Planner = Callable[[SweepSpec, list[Measurement]], list[float]]


def claim_task(
    sessions: sessionmaker[Session], worker_id: str, *, lease_seconds: float
) -> ClaimedTask | None:
    """Claim the next task: a queued one, or one whose worker stopped heartbeating.

    Args:
        sessions: Session factory.
        worker_id: Unique name of the claiming worker process.
        lease_seconds: A running task whose heartbeat is older than this is taken over.

    Returns:
        The claimed task, or None when there is no work.
    """
    now = utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    with _session(sessions) as session:
        candidate = (
            select(SweepTask.id)
            .join(Sweep, Sweep.id == SweepTask.sweep_id)
            .where(
                Sweep.state.in_(LIVE_SWEEP_STATES),
                Sweep.cancel_requested.is_(False),
                (SweepTask.state == TaskState.queued)
                | ((SweepTask.state == TaskState.running) & (SweepTask.heartbeat_at < stale)),
                SweepTask.state.in_(TASK_FROM[TaskState.running]),
            )
            .order_by(Sweep.created_at, SweepTask.slot)
            .limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            candidate = candidate.with_for_update(of=SweepTask, skip_locked=True)
        row = session.execute(
            update(SweepTask)
            .where(SweepTask.id == candidate.scalar_subquery())
            .values(
                state=TaskState.running,
                worker_id=worker_id,
                heartbeat_at=now,
                attempts=SweepTask.attempts + 1,
                updated_at=now,
            )
            .returning(
                SweepTask.id,
                SweepTask.sweep_id,
                SweepTask.slot,
                SweepTask.ratio,
                SweepTask.attempts,
                SweepTask.optuna_trial_number,
                SweepTask.kind,
                SweepTask.weights,
            )
        ).one_or_none()
        if row is None:
            session.commit()
            return None
        session.execute(
            update(Sweep)
            .where(Sweep.id == row.sweep_id, Sweep.state.in_(SWEEP_FROM[SweepState.running]))
            .values(state=SweepState.running, started_at=now, updated_at=now)
        )
        sweep = session.get_one(Sweep, row.sweep_id)
        spec = SweepSpec.model_validate(sweep.spec)
        claimed = ClaimedTask(
            task_id=row.id,
            sweep_id=row.sweep_id,
            slot=row.slot,
            candidate=_candidate(spec, row.ratio, row.weights),
            attempts=row.attempts,
            optuna_trial_number=row.optuna_trial_number,
            study_name=sweep.study_name,
            spec=spec,
            kind=TaskKind(row.kind),
            fingerprint=sweep.fingerprint,
        )
        session.commit()
        return claimed


def _candidate(
    spec: SweepSpec, ratio: float | None, weights: dict[str, float] | None
) -> Candidate | None:
    """A task row's candidate: a k-domain mix's when the row has weights, else its ratio's."""
    if weights is not None:
        return Candidate.of_mix(spec, weights)
    return Candidate(ratio) if ratio is not None else None


def heartbeat(sessions: sessionmaker[Session], task_id: int, worker_id: str) -> Heartbeat:
    """Renew the lease on a task, and learn whether to go on."""
    with _session(sessions) as session:
        renewed = _rowcount(
            session.execute(
                update(SweepTask).where(*_held_by(task_id, worker_id)).values(heartbeat_at=utcnow())
            )
        )
        cancel = session.scalar(
            select(Sweep.cancel_requested)
            .join(SweepTask, SweepTask.sweep_id == Sweep.id)
            .where(SweepTask.id == task_id)
        )
        session.commit()
    if not renewed:
        return Heartbeat.lost
    return Heartbeat.cancel if cancel else Heartbeat.ok


def record_trial(
    sessions: sessionmaker[Session], task_id: int, worker_id: str, trial_number: int
) -> bool:
    """Remember which Optuna trial a task is running, so a worker taking over can close it.

    Returns:
        False when the worker no longer holds the task (nothing is written).
    """
    with _session(sessions) as session:
        owned = _rowcount(
            session.execute(
                update(SweepTask)
                .where(*_held_by(task_id, worker_id))
                .values(optuna_trial_number=trial_number)
            )
        )
        session.commit()
    return bool(owned)


def complete_task(
    sessions: sessionmaker[Session],
    task: ClaimedTask,
    worker_id: str,
    result: TaskResult,
    finalize: Finalizer | None = None,
    plan: Planner | None = None,
) -> bool:
    """Write a task's measurements and count it towards its sweep.

    Args:
        finalize: When given, and this was the sweep's last task, the recommendation is written
            afterwards by `finalize_sweep` (outside this transaction). The worker passes None and
            finalizes itself once it has closed the task's Optuna trial.
        plan: For a ``ratios: auto`` sweep, chooses the trajectories' ratios once the last
            measurement of the quick screen lands; they are queued in the same transaction.

    Returns:
        False when the worker no longer owned the task (nothing is written: another worker has it).
    """
    now = utcnow()
    with _session(sessions) as session:
        # Lock order sweep -> task everywhere (request_cancel does the same), so a completion and
        # a cancel on PostgreSQL never wait on each other in a cycle. The lock is held for a few
        # row writes only: no worker code runs inside it.
        session.execute(select(Sweep.id).where(Sweep.id == task.sweep_id).with_for_update())
        owned = _rowcount(
            session.execute(
                update(SweepTask)
                .where(*_held_by(task.task_id, worker_id))
                .values(
                    state=TaskState.done,
                    ratio=result.ratio,
                    forwards=result.forwards,
                    optuna_trial_number=result.optuna_trial_number,
                    updated_at=now,
                )
            )
        )
        if not owned:
            session.rollback()
            return False
        session.add_all(_measurement_row(task, result.ratio, m) for m in result.measurements)
        session.execute(
            update(Sweep)
            .where(Sweep.id == task.sweep_id)
            .values(
                tasks_done=Sweep.tasks_done + 1,
                forwards=Sweep.forwards + result.forwards,
                backwards=Sweep.backwards + result.backwards,
                compute_seconds=Sweep.compute_seconds + result.seconds,
                updated_at=now,
            )
        )
        if result.sources:  # the same counts from every worker of the sweep: the last one stays
            session.execute(
                update(Sweep).where(Sweep.id == task.sweep_id).values(sources=result.sources)
            )
        if task.spec.ratios == "auto" and plan is not None:
            _plan_trajectories_without_commit(session, task, plan)
        session.commit()
    if finalize is not None:
        finalize_sweep(sessions, task.sweep_id, finalize)
    return True


def start_trajectory(sessions: sessionmaker[Session], task: ClaimedTask, worker_id: str) -> bool:
    """Begin (or begin again) a trajectory: points an earlier owner wrote are dropped.

    Returns:
        False when the worker no longer owns the task.
    """
    with _session(sessions) as session:
        owned = _rowcount(
            session.execute(
                update(SweepTask)
                .where(*_held_by(task.task_id, worker_id))
                .values(steps_done=0, heartbeat_at=utcnow())
            )
        )
        if owned:
            session.execute(delete(TrajectoryPoint).where(TrajectoryPoint.task_id == task.task_id))
        session.commit()
        return bool(owned)


def record_points(
    sessions: sessionmaker[Session],
    task: ClaimedTask,
    worker_id: str,
    ratio: float,
    steps_done: int,
    points: Sequence[PointResult],
) -> bool:
    """Write one measurement's points of a running trajectory, while the worker owns the task.

    Returns:
        False when the worker no longer owns the task (nothing is written).
    """
    with _session(sessions) as session:
        owned = _rowcount(
            session.execute(
                update(SweepTask)
                .where(*_held_by(task.task_id, worker_id))
                .values(steps_done=steps_done, ratio=ratio, heartbeat_at=utcnow())
            )
        )
        if not owned:
            session.rollback()
            return False
        session.add_all(
            TrajectoryPoint(
                sweep_id=task.sweep_id,
                task_id=task.task_id,
                ratio=ratio,
                **json_safe({**vars(p), "role": p.role.value, "status": p.status.value}),
            )
            for p in points
        )
        session.commit()
        return True


def complete_trajectory(
    sessions: sessionmaker[Session],
    task: ClaimedTask,
    worker_id: str,
    result: TrajectoryResult,
    finalize: Finalizer | None = None,
) -> bool:
    """Close a trajectory task (its points are written already) and count its costs, once.

    Args:
        finalize: As for `complete_task`: when given, the sweep is finalized afterwards if this
            was its last task (the worker passes None and finalizes after closing its trial).

    Returns:
        False when the worker no longer owned the task (nothing is written).
    """
    now = utcnow()
    with _session(sessions) as session:
        session.execute(select(Sweep.id).where(Sweep.id == task.sweep_id).with_for_update())
        owned = _rowcount(
            session.execute(
                update(SweepTask)
                .where(*_held_by(task.task_id, worker_id))
                .values(
                    state=TaskState.done,
                    ratio=result.ratio,
                    steps_done=result.steps_done,
                    pruned=result.pruned,
                    forecast=[f.model_dump(mode="json") for f in result.forecast],
                    forwards=result.forwards,
                    optuna_trial_number=result.optuna_trial_number,
                    updated_at=now,
                )
            )
        )
        if not owned:
            session.rollback()
            return False
        session.execute(
            update(Sweep)
            .where(Sweep.id == task.sweep_id)
            .values(
                tasks_done=Sweep.tasks_done + 1,
                forwards=Sweep.forwards + result.forwards,
                backwards=Sweep.backwards + result.backwards,
                optimizer_steps=Sweep.optimizer_steps + result.steps_done,
                compute_seconds=Sweep.compute_seconds + result.seconds,
                updated_at=now,
            )
        )
        session.commit()
    if finalize is not None:
        finalize_sweep(sessions, task.sweep_id, finalize)
    return True


def _plan_trajectories_without_commit(session: Session, task: ClaimedTask, plan: Planner) -> None:
    # Under the sweep's row lock: exactly one completion sees the screen finished and no
    # trajectory queued yet.
    kinds = session.execute(
        select(SweepTask.kind, SweepTask.state).where(SweepTask.sweep_id == task.sweep_id)
    ).all()
    screen_done = all(state == TaskState.done for kind, state in kinds if kind == TaskKind.measure)
    if not screen_done or any(kind == TaskKind.trajectory for kind, _ in kinds):
        return
    measurements = list(
        session.scalars(select(Measurement).where(Measurement.sweep_id == task.sweep_id))
    )
    try:
        chosen = plan(task.spec, measurements)
    except Exception as exc:  # a bug in the planner must not leave the sweep running forever
        end_sweep_without_commit(
            session, task.sweep_id, SweepState.failed, f"choosing trajectories failed: {exc!r}"
        )
        return
    first = task.spec.slots
    session.add_all(
        SweepTask(
            sweep_id=task.sweep_id,
            slot=first + i,
            ratio=ratio,
            kind=TaskKind.trajectory,
            state=TaskState.queued,
        )
        for i, ratio in enumerate(chosen)
    )
    # The sweep promised trajectory_slots tasks; a planner that found fewer distinct ratios
    # lowers the total so the sweep still finishes.
    missing = task.spec.trajectory_slots - len(chosen)
    if missing:
        session.execute(
            update(Sweep)
            .where(Sweep.id == task.sweep_id)
            .values(tasks_total=Sweep.tasks_total - missing)
        )


def finalize_sweep(sessions: sessionmaker[Session], sweep_id: str, finalize: Finalizer) -> bool:
    """Write the recommendation of a running sweep whose tasks are all done.

    Reads in one short transaction, computes with none open, writes in another that moves the
    sweep only from ``running``: when two workers finalize the same sweep (the last completion
    and a housekeeping pass), the first write wins and the second matches no row.

    Returns:
        True when this call ended the sweep (succeeded, or failed because the rules raised).
    """
    with _session(sessions) as session:
        sweep = session.execute(
            select(Sweep.spec, Sweep.state).where(Sweep.id == sweep_id, _all_tasks_done())
        ).one_or_none()
        if sweep is None or sweep.state != SweepState.running:
            session.commit()
            return False
        measurements = list(
            session.scalars(
                select(Measurement)
                .where(Measurement.sweep_id == sweep_id)
                .order_by(Measurement.ratio, Measurement.eval_set)
            )
        )
        trajectories = list(
            session.scalars(
                select(SweepTask)
                .where(
                    SweepTask.sweep_id == sweep_id,
                    SweepTask.kind == TaskKind.trajectory,
                    SweepTask.state == TaskState.done,
                )
                .order_by(SweepTask.ratio)
            )
        )
        session.commit()
    try:
        recommendation = finalize(
            SweepSpec.model_validate(sweep.spec), measurements, trajectories=trajectories
        )
    except Exception as exc:  # a bug in the rules must not leave the sweep running forever
        with _session(sessions) as session:
            failed = end_sweep_without_commit(
                session, sweep_id, SweepState.failed, f"recommendation failed: {exc!r}"
            )
            session.commit()
        return failed
    now = utcnow()
    with _session(sessions) as session:
        ended = _rowcount(
            session.execute(
                update(Sweep)
                .where(
                    Sweep.id == sweep_id,
                    Sweep.state.in_(SWEEP_FROM[SweepState.succeeded]),
                    _all_tasks_done(),
                )
                .values(
                    state=SweepState.succeeded,
                    recommendation=json_safe(recommendation.model_dump(mode="json")),
                    finished_at=now,
                    updated_at=now,
                )
            )
        )
        session.commit()
    return bool(ended)


@dataclass(frozen=True)
class FinishingSweep:
    """A running sweep with every task done: its study still to close, its answer to write."""

    sweep_id: str
    study_name: str
    spec: SweepSpec


def sweeps_to_finish(sessions: sessionmaker[Session], *, limit: int = 8) -> list[FinishingSweep]:
    """Running sweeps whose tasks are all done but which have no recommendation yet.

    Normally the worker that completed the last task finalizes at once, and this is empty. It is
    not when that worker died between its completion and the finalization.
    """
    with _session(sessions) as session:
        rows = session.execute(
            select(Sweep.id, Sweep.study_name, Sweep.spec)
            .where(Sweep.state == SweepState.running, _all_tasks_done())
            .order_by(Sweep.updated_at)
            .limit(limit)
        ).all()
        session.commit()
    return [FinishingSweep(r.id, r.study_name, SweepSpec.model_validate(r.spec)) for r in rows]


def trial_records(
    sessions: sessionmaker[Session],
    sweep_id: str,
    *,
    lease_seconds: float,
    task_id: int | None,
    kind: TaskKind = TaskKind.measure,
) -> TrialRecords:
    """The Optuna trial numbers the sweep's tasks record: live ones, and done ones with results.

    Args:
        task_id: The asking worker's own task, left out of ``live`` (its recorded trial is the
            one a dead owner left behind).
        kind: Tasks of this kind only: measurement and trajectory tasks number the trials of
            two different studies.
    """
    stale = utcnow() - timedelta(seconds=lease_seconds)
    with _session(sessions) as session:
        tasks = session.execute(
            select(
                SweepTask.id,
                SweepTask.state,
                SweepTask.heartbeat_at,
                SweepTask.ratio,
                SweepTask.optuna_trial_number,
                SweepTask.pruned,
            ).where(
                SweepTask.sweep_id == sweep_id,
                SweepTask.kind == kind,
                SweepTask.optuna_trial_number.is_not(None),
            )
        ).all()
        rows = list(session.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id)))
        session.commit()
    by_task: dict[int, list[Measurement]] = {}
    for row in rows:
        by_task.setdefault(row.task_id, []).append(row)
    live: set[int] = set()
    done: dict[int, DoneTrial] = {}
    for t in tasks:
        number = t.optuna_trial_number
        fresh = t.heartbeat_at is not None and t.heartbeat_at >= stale
        if t.state == TaskState.running and fresh and t.id != task_id:
            live.add(number)
        elif t.state == TaskState.done and t.ratio is not None:
            measured = [_as_result(m) for m in by_task.get(t.id, [])]
            pruned = t.pruned or any(m.status is Status.pruned for m in measured)
            done[number] = DoneTrial(number, t.ratio, measured, pruned)
    return TrialRecords(frozenset(live), done)


def measured_points(
    sessions: sessionmaker[Session], sweep_id: str
) -> list[tuple[float, list[MeasurementResult]]]:
    """Per ratio an earlier sweep measured, its measurements: what a sweep that warm-starts from
    it (``warm_start_from``; the API checked that it is the same tenant's) seeds its study and
    its first eta_c guesses with. Empty when that sweep is gone."""
    with _session(sessions) as session:
        rows = list(
            session.scalars(
                select(Measurement)
                .where(Measurement.sweep_id == sweep_id)
                .order_by(Measurement.ratio, Measurement.eval_set, Measurement.id)
            )
        )
        session.commit()
    by_ratio: dict[float, list[MeasurementResult]] = {}
    for row in rows:
        by_ratio.setdefault(row.ratio, []).append(_as_result(row))
    return sorted(by_ratio.items())


def _measurement_row(task: ClaimedTask, ratio: float, m: MeasurementResult) -> Measurement:
    per_batch = [{**vars(b), "status": b.status.value} for b in m.per_batch]
    return Measurement(
        sweep_id=task.sweep_id,
        task_id=task.task_id,
        ratio=ratio,
        eval_set=m.eval_set,
        role=m.role.value,
        status=m.status.value,
        eta_c=m.eta_c,
        eta_c_low=m.eta_c_low,
        eta_c_high=m.eta_c_high,
        sharpness=m.sharpness,
        spread=m.spread,
        loss=m.loss,
        loss_change=m.loss_change,
        forwards=m.forwards,
        batches=m.batches,
        per_batch=json_safe(per_batch),
        rate_loss_changes=(
            json_safe([list(pair) for pair in m.rate_loss_changes])
            if m.rate_loss_changes is not None
            else None
        ),
        weights=m.weights,
    )


def _as_result(row: Measurement) -> MeasurementResult:
    return MeasurementResult(
        eval_set=row.eval_set,
        role=Role(row.role),
        status=Status(row.status),
        eta_c=row.eta_c,
        eta_c_low=row.eta_c_low,
        eta_c_high=row.eta_c_high,
        sharpness=row.sharpness,
        spread=row.spread,
        loss=row.loss,
        loss_change=row.loss_change,
        forwards=row.forwards,
        batches=row.batches,
        per_batch=[_as_batch(entry) for entry in row.per_batch],
        rate_loss_changes=(
            [
                (float(lr), math.nan if change is None else float(change))
                for lr, change in row.rate_loss_changes
            ]
            if row.rate_loss_changes is not None
            else None
        ),
        weights=row.weights,
    )


def _as_batch(entry: dict[str, Any]) -> BatchResult:
    # PostgreSQL's JSON has no infinity: a missing upper bound was stored as null.
    return BatchResult(**{**entry, "status": Status(entry["status"])})


def release_task(sessions: sessionmaker[Session], task_id: int, worker_id: str) -> bool:
    """Hand a task back unfinished (the worker is shutting down); it does not count as a try.

    Returns:
        False when the worker no longer held the task.
    """
    with _session(sessions) as session:
        owned = _rowcount(
            session.execute(
                update(SweepTask)
                .where(*_held_by(task_id, worker_id))
                .values(
                    state=TaskState.queued,
                    worker_id=None,
                    heartbeat_at=None,
                    attempts=case((SweepTask.attempts > 0, SweepTask.attempts - 1), else_=0),
                    updated_at=utcnow(),
                )
            )
        )
        session.commit()
    return bool(owned)


def fail_task(
    sessions: sessionmaker[Session],
    task: ClaimedTask,
    worker_id: str,
    error: str,
    *,
    retry: bool,
    max_attempts: int,
) -> bool:
    """Record a failed try: queue the task again, or fail the whole sweep with the reason.

    Both branches write only while the worker still holds the task: a worker that lost its lease
    (it stalled, another worker took over) fails nothing, whatever went wrong in its hands.

    Args:
        retry: False for errors the user must fix (a bad path, too little data): no retry helps.
        max_attempts: Tries a task gets before the sweep fails.

    Returns:
        False when the worker no longer held the task (nothing is written).
    """
    now = utcnow()
    with _session(sessions) as session:
        if retry and task.attempts < max_attempts:
            owned = _rowcount(
                session.execute(
                    update(SweepTask)
                    .where(*_held_by(task.task_id, worker_id))
                    .values(
                        state=TaskState.queued,
                        worker_id=None,
                        heartbeat_at=None,
                        error=error,
                        updated_at=now,
                    )
                )
            )
        else:
            # Sweep row first, as in complete_task: the same lock order on every path.
            session.execute(select(Sweep.id).where(Sweep.id == task.sweep_id).with_for_update())
            owned = _rowcount(
                session.execute(
                    update(SweepTask)
                    .where(*_held_by(task.task_id, worker_id))
                    .values(state=TaskState.failed, error=error, updated_at=now)
                )
            )
            if owned:
                end_sweep_without_commit(session, task.sweep_id, SweepState.failed, error)
        session.commit()
    return bool(owned)


def cancel_sweep_tasks(sessions: sessionmaker[Session], sweep_id: str) -> bool:
    """Carry out a cancel request: the sweep and every unfinished task end as cancelled.

    Only a sweep whose user asked for the cancel is touched.

    Returns:
        True when this call ended the sweep.
    """
    with _session(sessions) as session:
        ended = end_sweep_without_commit(
            session, sweep_id, SweepState.cancelled, None, requested_only=True
        )
        session.commit()
    return ended


def requeue_stalled_tasks(sessions: sessionmaker[Session], *, lease_seconds: float) -> int:
    """The stalled-task pass: running tasks whose heartbeat is older than the lease go back to
    ``queued``, free for any worker, with their recorded Optuna trial kept for the next owner.

    The worker that held such a task has died or stalled; if it comes back, every write it makes
    finds the task out of its hands (`_held_by`) and changes nothing. `claim_task` takes over a
    stale lease too, for a worker that stalls between this pass and the claim.

    Returns:
        How many tasks it requeued.
    """
    now = utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    with _session(sessions) as session:
        candidates = select(SweepTask.id).where(
            SweepTask.state.in_(TASK_FROM[TaskState.queued]),
            SweepTask.state == TaskState.running,
            SweepTask.heartbeat_at < stale,
        )
        if session.get_bind().dialect.name == "postgresql":
            # A task locked right now is being claimed or completed: leave it to that
            # transaction instead of waiting on it (and into a lock cycle with its sweep row).
            candidates = candidates.with_for_update(skip_locked=True)
        requeued = _rowcount(
            session.execute(
                update(SweepTask)
                .where(
                    SweepTask.id.in_(candidates),
                    SweepTask.state == TaskState.running,
                    SweepTask.heartbeat_at < stale,
                )
                .values(state=TaskState.queued, worker_id=None, heartbeat_at=None, updated_at=now)
            )
        )
        session.commit()
    return requeued


def end_abandoned_cancels(sessions: sessionmaker[Session], *, lease_seconds: float) -> int:
    """End sweeps whose cancel was requested while a worker held a task, and that worker died.

    A cancel requested while a worker holds a task is carried out by that worker's heartbeat; if
    the worker died no heartbeat comes, so once its lease has run out this pass ends the sweep.

    Returns:
        How many sweeps it ended.
    """
    stale = utcnow() - timedelta(seconds=lease_seconds)
    live_task = (
        select(SweepTask.id)
        .where(
            SweepTask.sweep_id == Sweep.id,
            SweepTask.state == TaskState.running,
            SweepTask.heartbeat_at >= stale,
        )
        .exists()
    )
    ended = 0
    with _session(sessions) as session:
        abandoned = session.scalars(
            select(Sweep.id)
            .where(Sweep.cancel_requested.is_(True), Sweep.state.in_(LIVE_SWEEP_STATES), ~live_task)
            .limit(16)
        ).all()
        for sweep_id in abandoned:
            ended += end_sweep_without_commit(
                session, sweep_id, SweepState.cancelled, None, requested_only=True
            )
        session.commit()
    return ended


def _all_tasks_done() -> ColumnElement[bool]:
    unfinished = (
        select(SweepTask.id)
        .where(SweepTask.sweep_id == Sweep.id, SweepTask.state != TaskState.done)
        .exists()
    )
    return (Sweep.tasks_done >= Sweep.tasks_total) & ~unfinished


def end_sweep_without_commit(
    session: Session,
    sweep_id: str,
    state: SweepState,
    error: str | None,
    *,
    requested_only: bool = False,
) -> bool:
    """Move a sweep to a final state, and its unfinished tasks to ``cancelled``, in the caller's
    transaction; each write is guarded by the transition table.

    Args:
        state: ``failed``, ``cancelled`` (or ``succeeded``, which `finalize_sweep` writes itself).
        error: Why the sweep failed, when it did.
        requested_only: End it only if its user asked for the cancel.

    Returns:
        False when the sweep's state does not allow the move (nothing is written).
    """
    now = utcnow()
    guard = [Sweep.id == sweep_id, Sweep.state.in_(SWEEP_FROM[state])]
    if requested_only:
        guard.append(Sweep.cancel_requested.is_(True))
    ended = _rowcount(
        session.execute(
            update(Sweep)
            .where(*guard)
            .values(state=state, error=error, finished_at=now, updated_at=now)
        )
    )
    if not ended:
        return False
    session.execute(
        update(SweepTask)
        .where(
            SweepTask.sweep_id == sweep_id,
            SweepTask.state.in_(TASK_FROM[TaskState.cancelled]),
        )
        .values(state=TaskState.cancelled, updated_at=now)
    )
    return True


def reopen_sweep_without_commit(session: Session, sweep_id: str, added: int) -> bool:
    """Move a succeeded sweep back to ``running`` for ``added`` new tasks (candidates added), in
    the caller's transaction, guarded by the transition table. Its recommendation is dropped: it
    is written again once the new tasks are done. Its edition goes up by one in the same
    statement, so the delivery loop tells the next final state from the one it has delivered.

    Returns:
        False when the sweep's state does not allow the move (nothing is written).
    """
    now = utcnow()
    reopened = _rowcount(
        session.execute(
            update(Sweep)
            .where(
                Sweep.id == sweep_id,
                Sweep.state == SweepState.succeeded,
                Sweep.state.in_(SWEEP_FROM[SweepState.running]),
            )
            .values(
                state=SweepState.running,
                tasks_total=Sweep.tasks_total + added,
                edition=Sweep.edition + 1,
                recommendation=None,
                finished_at=None,
                updated_at=now,
            )
        )
    )
    return bool(reopened)


@contextmanager
def _session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose database errors become :class:`DatabaseError` with a hint."""
    with database_errors("reach the job queue"), sessions() as session:
        yield session


def _held_by(task_id: int, worker_id: str) -> tuple[ColumnElement[bool], ...]:
    """The task is still running in ``worker_id``'s hands: the guard on every write a worker
    makes, so a worker whose lease ran out cannot touch a task another worker has taken over."""
    return (
        SweepTask.id == task_id,
        SweepTask.worker_id == worker_id,
        SweepTask.state == TaskState.running,
    )


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None: PostgreSQL's JSON has no Infinity or NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _rowcount(result: Result[Any]) -> int:
    # UPDATE results are cursor results; the generic Result type does not promise rowcount.
    return cast(CursorResult[Any], result).rowcount
