"""One claimed task on a worker: the sweep prepared once and kept, the task's Optuna trial, the
computation, and the rows it hands back to the worker loop to write.

The worker loop (`workers/worker.py`) claims a task, keeps its lease and writes its rows; a
`TaskRunner` runs the task in between, with no transaction open. It never reaches the queue
itself: what it reads and writes of the sweep's rows goes through the `TaskRows` the loop binds
to the claimed task (each write guarded by the worker's lease, False once another worker owns
the task), so the loop stays the one module of ``workers`` that talks to the service side.

Over several devices (``SHARPMIX_DEVICES``) the runner is rank 0's: it sends the other ranks
every decision it takes (`TaskRunner._agree`), so they run the same computation on their shards
(`workers/group.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, TypeVar

import torch
from optuna.storages import RDBStorage

from contract.mix import Candidate
from contract.recommendation import SetForecast
from contract.results import (
    MeasurementResult,
    PointResult,
    TaskResult,
    TrajectoryResult,
    TrialRecords,
)
from contract.spec import SweepSpec
from contract.states import TaskKind
from contract.wire import finite
from workers import reuse
from workers import study as studies
from workers.data import LoadPolicy
from workers.gradient_store import GradientStore
from workers.group import Leader
from workers.sweep import BatchStep, PreparedSweep, TaskAbortedError, prepare
from workers.trajectory import run_trajectory

log = logging.getLogger("sharpmix.worker")

T = TypeVar("T")

LOST = "lost"  # the reason a task stops when a write finds the lease gone (the queue's Heartbeat)


class Claimed(Protocol):
    """What a run reads of the task the loop claimed (the queue's `ClaimedTask`)."""

    @property
    def task_id(self) -> int: ...
    @property
    def sweep_id(self) -> str: ...
    @property
    def slot(self) -> int: ...
    @property
    def candidate(self) -> Candidate | None: ...
    @property
    def optuna_trial_number(self) -> int | None: ...
    @property
    def study_name(self) -> str: ...
    @property
    def spec(self) -> SweepSpec: ...
    @property
    def kind(self) -> TaskKind: ...
    @property
    def fingerprint(self) -> dict[str, str] | None: ...


class TaskRows(Protocol):
    """The sweep's rows as a run of the claimed task reads and writes them, through the loop.

    Each call is one short transaction; a write returns False once the worker's lease on the
    task is lost (another worker took it over).
    """

    def trial_records(self, kind: TaskKind) -> TrialRecords:
        """The trial numbers the sweep's tasks of ``kind`` record (`studies.close_orphans`)."""
        ...

    def measured_points(self, sweep_id: str) -> list[tuple[float, list[MeasurementResult]]]:
        """Per ratio an earlier sweep measured, its measurements (a warm start)."""
        ...

    def record_trial(self, number: int) -> bool:
        """Record the task's Optuna trial number."""
        ...

    def start_trajectory(self) -> bool:
        """Mark the trajectory task's stepping begun."""
        ...

    def record_points(self, ratio: float, step: int, points: list[PointResult]) -> bool:
        """Write a trajectory's points of one measured step."""
        ...

    def complete(self, result: TaskResult) -> bool:
        """Complete a measurement task with its result."""
        ...

    def complete_trajectory(self, result: TrajectoryResult) -> bool:
        """Complete a trajectory task with its result."""
        ...

    def finalize(self) -> None:
        """Write the sweep's recommendation when every task is done."""
        ...


@dataclass(eq=False)
class TaskRunner:
    """Runs claimed tasks on one worker's device, keeping one sweep prepared between them.

    Attributes:
        device: Where the model runs (``cuda``, ``cuda:<rank>``, ``cpu``).
        dtype: The model's weights dtype.
        micro_batch_tokens: Tokens per forward or backward micro-batch.
        policy: How models and data are loaded.
        gradient_store: Per-domain gradients kept on disk by the sweep's fingerprint.
        storage: The worker's one Optuna storage (made on first use).
        lease_seconds: A trial older than this that no live task records is an orphan.
        leader: Lead the other ranks of a group over several devices (`workers/group.py`).
    """

    device: str
    dtype: torch.dtype
    micro_batch_tokens: int
    policy: LoadPolicy
    gradient_store: GradientStore
    storage: Callable[[], RDBStorage]
    lease_seconds: float
    leader: Leader | None = None
    _prepared: tuple[str, PreparedSweep] | None = field(default=None, init=False, repr=False)

    def measure(self, task: Claimed, rows: TaskRows, check: Callable[[], None]) -> None:
        """A measurement task: its trial asks the candidate, which is measured and written.

        Args:
            task: The claimed task.
            rows: The task's rows, bound to this worker's lease.
            check: Raises :class:`TaskAbortedError` when the task must stop here (lease lost,
                sweep cancelled, shutdown); called between batches and set-up steps.
        """
        spec = task.spec
        start = time.perf_counter()
        prepared, fresh = self._prepare(task, check)
        fixed = task.candidate.ratio if task.candidate is not None else None
        study = studies.open_study(
            self.storage(), task.study_name, spec, slot=task.slot, ratio=fixed
        )
        seeded = reuse.SEEDED_FROM in study.user_attrs
        if spec.warm_start_from is not None and (fresh or not seeded):
            # Issue 11, part 5: the earlier sweep seeds the study once, and the first guesses.
            earlier = rows.measured_points(spec.warm_start_from)
            reuse.seed_study(study, spec, earlier)
            if fresh and self.leader is None:
                # Sharded, every rank must probe alike: the followers never see these guesses.
                prepared.warm.update(reuse.eta_guesses(earlier))
        studies.close_orphans(
            study,
            spec,
            rows.trial_records(TaskKind.measure),
            own_previous=task.optuna_trial_number,
            older_than=timedelta(seconds=self.lease_seconds),
        )
        trial, candidate = studies.ask(study, spec)

        def recorded() -> Candidate:
            if not rows.record_trial(trial.number):
                studies.abandon(study, trial)
                raise TaskAbortedError(LOST)
            return candidate

        self._agree(recorded)

        def on_batch(step: BatchStep) -> bool:
            def go_on() -> bool:
                check()
                etas = {name: result.eta for name, result in step.results.items()}
                return studies.report(trial, spec, step.batch, etas)

            return self._agree(go_on)

        try:
            measured = prepared.measure_ratio(candidate, on_batch)
        except BaseException:
            studies.abandon(study, trial)
            raise
        setup_forwards = prepared.setup_forwards if fresh else 0
        result = TaskResult(
            ratio=candidate.ratio,
            measurements=measured.measurements,
            forwards=measured.forwards + setup_forwards,
            backwards=prepared.backwards if fresh else 0,
            seconds=time.perf_counter() - start,
            optuna_trial_number=trial.number,
            sources=prepared.sources,
        )
        studies.annotate(trial, spec, measured.measurements)
        if not rows.complete(result):
            log.warning("task %s was taken over by another worker; result dropped", task.task_id)
            studies.abandon(study, trial)
            return
        studies.finish(
            study, trial, spec, candidate.ratio, measured.measurements, pruned=measured.pruned
        )
        rows.finalize()

    def trajectory(self, task: Claimed, rows: TaskRows, check: Callable[[], None]) -> None:
        """K real steps on one candidate's mix; points are written as they are measured.

        Args:
            task: The claimed task (a trajectory task, created with its candidate).
            rows: The task's rows, bound to this worker's lease.
            check: Raises :class:`TaskAbortedError` when the task must stop here; called
                before every step and between set-up steps.
        """
        spec = task.spec
        assert task.candidate is not None  # trajectory tasks are created with their candidate
        candidate = task.candidate
        start = time.perf_counter()
        prepared, fresh = self._prepare(task, check)
        study = studies.open_trajectory_study(
            self.storage(), task.study_name, spec, slot=task.slot, ratio=candidate.ratio
        )
        studies.close_trajectory_orphans(
            study,
            rows.trial_records(TaskKind.trajectory),
            own_previous=task.optuna_trial_number,
            older_than=timedelta(seconds=self.lease_seconds),
        )
        trial = study.ask()
        trial.suggest_float(studies.RATIO, 0.0, 1.0)

        def started() -> None:
            if not rows.record_trial(trial.number) or not rows.start_trajectory():
                studies.abandon(study, trial)
                raise TaskAbortedError(LOST)

        self._agree(started)

        def on_measure(step: int, points: list[PointResult]) -> bool:
            def go_on() -> bool:
                if not rows.record_points(candidate.ratio, step, points):
                    raise TaskAbortedError(LOST)
                return studies.report_trajectory(trial, spec, step, points)

            return self._agree(go_on)

        try:
            measured = run_trajectory(
                prepared, candidate, on_measure=on_measure, checkpoint=lambda: self._agree(check)
            )
        except BaseException:
            studies.abandon(study, trial)
            raise
        result = TrajectoryResult(
            ratio=candidate.ratio,
            steps_done=measured.steps_done,
            pruned=measured.pruned,
            forecast=[
                SetForecast(
                    eval_set=f.eval_set,
                    role=f.role,
                    steps=f.steps,
                    drift=finite(f.drift),
                    low=finite(f.low),
                    high=finite(f.high),
                    measured=f.measured,
                    method=f.method,
                )
                for f in measured.forecast
            ],
            forwards=measured.forwards + (prepared.setup_forwards if fresh else 0),
            backwards=measured.backwards + (prepared.backwards if fresh else 0),
            seconds=time.perf_counter() - start,
            optuna_trial_number=trial.number,
        )
        studies.annotate_trajectory(trial, spec, measured)
        if not rows.complete_trajectory(result):
            log.warning("task %s was taken over by another worker; result dropped", task.task_id)
            studies.abandon(study, trial)
            return
        studies.finish_trajectory(study, trial, measured.ratio, pruned=measured.pruned)
        rows.finalize()

    def reuses(self, task: Claimed) -> bool:
        """Whether the sweep prepared for an earlier task serves this one too."""
        return self._cached(task) is not None

    def forget(self) -> None:
        """Drop the prepared sweep (its model and gradients)."""
        self._prepared = None

    def _cached(self, task: Claimed) -> PreparedSweep | None:
        """The sweep prepared for an earlier task, when it serves this one too."""
        if self._prepared is not None and self._prepared[0] == task.sweep_id:
            cached = self._prepared[1]
            if cached.gradients or task.kind != TaskKind.measure:
                return cached
        return None

    def _prepare(self, task: Claimed, check: Callable[[], None]) -> tuple[PreparedSweep, bool]:
        cached = self._cached(task)
        if cached is not None:
            return cached, False
        self._prepared = None  # one sweep's model and gradients in memory at a time
        need_gradients = task.kind == TaskKind.measure
        # Issue 11, part 5: gradients of the same files kept on disk are read back, not recomputed.
        # Sharded, every rank must run the same backward passes: no store (one rank's disk).
        key = (
            None
            if self.leader is not None
            else self.gradient_store.key(task.fingerprint, task.spec, self.dtype, self.device)
        )
        stored = need_gradients and key is not None and self.gradient_store.has(key)
        prepared = self._load(task, check, gradients=need_gradients and not stored)
        if stored and key is not None:
            kept = self.gradient_store.load(key, prepared.model)
            if kept is not None:
                prepared.gradients = kept
            else:  # unreadable after all: compute them
                prepared = self._load(task, check, gradients=True)
        elif key is not None and need_gradients:
            self.gradient_store.save(key, prepared.model, prepared.gradients)
        self._prepared = (task.sweep_id, prepared)
        return prepared, True

    def _load(self, task: Claimed, check: Callable[[], None], *, gradients: bool) -> PreparedSweep:
        return prepare(
            task.spec,
            self.policy,
            device=self.device,
            dtype=self.dtype,
            micro_batch_tokens=self.micro_batch_tokens,
            checkpoint=lambda: self._agree(check),
            gradients=gradients,
            ranks=self.leader.ranks if self.leader is not None else None,
        )

    def _agree(self, decide: Callable[[], T]) -> T:
        """A decision every rank takes alike: here alone, or here and told to the other ranks."""
        return decide() if self.leader is None else self.leader.decide(decide)


__all__ = ["Claimed", "TaskRows", "TaskRunner"]
