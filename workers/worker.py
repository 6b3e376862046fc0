"""The sweep worker: claim a task, compute it with no transaction open, write it, repeat.

A worker process runs one task at a time (one per GPU). While it computes, a heartbeat thread
renews the task's lease; the heartbeat also learns when the user cancelled the sweep or when the
lease was lost (the process stalled past the lease and another worker took the task over). Both,
and a shutdown request (SIGTERM), stop the computation at the next batch boundary: a cancelled
sweep ends, a lost task is left to its new owner, and on shutdown the task is handed back.

Over several devices (``SHARPMIX_DEVICES``), this loop is rank 0 of the worker's group and the
other ranks follow it (`workers/group.py`): it sends them each task it claims and every decision
it takes (`_agree`), and it stops leading after a failed task, since the group may be spent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import datasets
import torch
import transformers
from optuna.storages import RDBStorage
from safetensors import SafetensorError
from sqlalchemy.orm import Session, sessionmaker

from contract.mix import Candidate
from contract.recommendation import SetForecast
from contract.results import PointResult, TaskResult, TrajectoryResult
from contract.states import TaskKind
from contract.wire import finite
from service.config import Settings
from service.db import queue
from service.db.engine import Timeouts, make_engine, make_session_factory
from service.errors import DatabaseError, InvalidRequestError
from workers import reuse
from workers import study as studies
from workers.curvature import CurvatureError
from workers.data import DataError, LoadPolicy
from workers.gradient_store import GradientStore
from workers.group import Leader, Order
from workers.recommend import plan_trajectories, recommend
from workers.sweep import (
    BatchStep,
    PreparedSweep,
    TaskAbortedError,
    default_micro_batch_tokens,
    prepare,
)
from workers.trajectory import run_trajectory

log = logging.getLogger("sharpmix.worker")

T = TypeVar("T")

# Errors the user must fix: retrying the task cannot help, so the sweep fails with the message.
USER_ERRORS = (DataError, CurvatureError, InvalidRequestError)
MAX_ATTEMPTS = 3
_BROKEN_WEIGHTS = (
    "model.path: the safetensors weights cannot be read ({reason}): the file is truncated or "
    "corrupt; write the model again with save_pretrained(dir, safe_serialization=True) and "
    "submit a new sweep"
)


def classify(exc: Exception) -> tuple[bool, str]:
    """Whether an error is the user's (fail the sweep at once) or transient (retry), and the
    message to record.

    The user's: everything our data and curvature code refuses with the field at fault, and a
    safetensors file that cannot be deserialised (a corrupt or truncated upload: another try
    reads the same bytes). Anything else may pass (a lost database connection, a full disk, a
    busy GPU), so the task is tried again, up to ``MAX_ATTEMPTS``.

    Returns:
        ``(is_user_error, message)``.
    """
    if isinstance(exc, USER_ERRORS):
        return True, str(exc)
    if isinstance(exc, SafetensorError):
        return True, _BROKEN_WEIGHTS.format(reason=exc)
    return False, f"{type(exc).__name__}: {exc}"


def default_worker_id() -> str:
    """host:pid:random, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def load_policy(settings: Settings) -> LoadPolicy:
    """How a worker (every rank of one) loads models and data."""
    return LoadPolicy(
        allowed_roots=settings.roots,
        cache_dir=settings.cache_dir,
        offline=settings.offline,
        trust_remote_code=settings.trust_remote_code,
    )


def resolve_device(setting: str) -> str:
    """``auto`` picks CUDA when there is one."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


@dataclass
class _Lease:
    """What the heartbeat thread found, read by the computation between batches."""

    state: queue.Heartbeat = queue.Heartbeat.ok


class Worker:
    """Claims and runs sweep tasks from the database until told to stop.

    Args:
        settings: The operator's settings (database, lease, device, loading policy).
        worker_id: Name in the task table; unique per process.
        stop: Set it to stop after (or, at a batch boundary, during) the current task.
        leader: Lead the other ranks of a group over several devices (`workers/group.py`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        stop: threading.Event | None = None,
        poll_seconds: float = 1.0,
        leader: Leader | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.stop = stop or threading.Event()
        self.poll_seconds = poll_seconds
        self.url = settings.resolved_database_url
        self.engine = make_engine(self.url, Timeouts.of(settings))
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.leader = leader
        self.spent = False  # leading a group whose ranks may be stuck after a failed task
        self.device = leader.crew.device if leader else resolve_device(settings.device)
        self.dtype = torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32
        self.micro_batch_tokens = settings.micro_batch_tokens or default_micro_batch_tokens(
            self.device
        )
        self.policy = load_policy(settings)
        self._prepared: tuple[str, PreparedSweep] | None = None
        self.gradient_store = GradientStore(
            settings.cache_dir / "gradients", settings.gradient_store_bytes
        )
        self._optuna: RDBStorage | None = None  # made on the first task, then reused
        # Progress bars of model loading and tokenisation are noise in a service's log.
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    def run(self, *, exit_when_idle: bool = False) -> int:
        """Process tasks until ``stop`` is set (or, with ``exit_when_idle``, no work is left).

        Returns:
            The number of tasks this worker completed.
        """
        done = 0
        log.info(
            "worker %s on %s (%s) polling %s",
            self.worker_id,
            self.device,
            self.dtype,
            self.engine.url.render_as_string(hide_password=True),
        )
        while not self.stop.is_set() and not self.spent:
            try:
                worked = self.run_one()
            except DatabaseError:
                # The database restarted, or PostgreSQL broke a lock cycle: try again shortly.
                log.exception("database error; retrying in %.0f s", self.poll_seconds * 5)
                self.stop.wait(self.poll_seconds * 5)
                continue
            done += worked
            if not worked:
                if exit_when_idle:
                    break
                self.stop.wait(self.poll_seconds)
        if self.leader is not None and not self.spent:
            self.leader.dismiss()
        return done

    def close(self) -> None:
        """Release the database connections and the cached model."""
        self._prepared = None
        if self._optuna is not None:
            self._optuna.engine.dispose()
            self._optuna = None
        self.engine.dispose()

    def run_one(self) -> bool:
        """One turn of the loop: the housekeeping passes, then claim one task and see it through.

        Returns:
            False when there was no work.
        """
        self.housekeeping()
        task = queue.claim_task(
            self.sessions, self.worker_id, lease_seconds=self.settings.lease_seconds
        )
        if task is None:
            if self.leader is not None:
                self.leader.idle()
            return False
        if self.leader is not None:
            reuse = self._cached(task) is not None
            spec, kind = task.spec, task.kind
            order = Order(task.task_id, task.sweep_id, kind, spec, task.candidate, reuse)
            self.leader.assign(order)
        log.info(
            "task %s slot %d of sweep %s (try %d)",
            task.task_id,
            task.slot,
            task.sweep_id,
            task.attempts,
        )
        lease = _Lease()
        beating = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(task, lease, beating), daemon=True)
        beat.start()
        try:
            self._compute(task, lease)
        except TaskAbortedError:
            self._aborted(task, lease)
        except Exception as exc:
            user, message = classify(exc)
            # A rank may be left inside a collective: the group's launcher starts a fresh one.
            self.spent = self.leader is not None
            if user:
                log.warning("sweep %s failed: %s", task.sweep_id, message)
            else:
                log.exception("task %s failed; it will be retried", task.task_id)
            failed = queue.fail_task(
                self.sessions,
                task,
                self.worker_id,
                message,
                retry=not user,
                max_attempts=MAX_ATTEMPTS,
            )
            if not failed:
                # The lease ran out while this worker stalled: the task is another's now, and
                # whatever went wrong here is not an error of the sweep.
                log.warning("task %s was taken over while it failed here", task.task_id)
        finally:
            beating.set()
            beat.join()
        return True

    def housekeeping(self) -> None:
        """The passes a worker makes before claiming, each in its own short transaction:

        1. tasks whose worker stopped heartbeating go back to the queue;
        2. cancels whose worker died are carried out;
        3. sweeps whose last worker died between completing the last task and writing the
           recommendation are finalized.
        """
        lease = self.settings.lease_seconds
        requeued = queue.requeue_stalled_tasks(self.sessions, lease_seconds=lease)
        if requeued:
            log.warning("%d task(s) of stalled workers requeued", requeued)
        queue.end_abandoned_cancels(self.sessions, lease_seconds=lease)
        for sweep in queue.sweeps_to_finish(self.sessions):
            # Every task is done, so no trial of the study is anyone's work in progress.
            records = queue.trial_records(
                self.sessions, sweep.sweep_id, lease_seconds=lease, task_id=None
            )
            study = studies.open_study(
                self._storage(), sweep.study_name, sweep.spec, slot=0, ratio=None
            )
            studies.close_orphans(study, sweep.spec, records, own_previous=None, older_than=None)
            if queue.finalize_sweep(self.sessions, sweep.sweep_id, recommend):
                log.info("sweep %s finished by the housekeeping pass", sweep.sweep_id)

    def _storage(self) -> RDBStorage:
        if self._optuna is None:
            self._optuna = studies.storage(self.url)
        return self._optuna

    def _compute(self, task: queue.ClaimedTask, lease: _Lease) -> None:
        if task.kind == TaskKind.trajectory:
            self._compute_trajectory(task, lease)
            return
        spec = task.spec
        start = time.perf_counter()
        prepared, fresh = self._prepare(task, lease)
        fixed = task.candidate.ratio if task.candidate is not None else None
        study = studies.open_study(
            self._storage(), task.study_name, spec, slot=task.slot, ratio=fixed
        )
        seeded = reuse.SEEDED_FROM in study.user_attrs
        if spec.warm_start_from is not None and (fresh or not seeded):
            # Issue 11, part 5: the earlier sweep seeds the study once, and the first guesses.
            earlier = queue.measured_points(self.sessions, spec.warm_start_from)
            reuse.seed_study(study, spec, earlier)
            if fresh and self.leader is None:
                # Sharded, every rank must probe alike: the followers never see these guesses.
                prepared.warm.update(reuse.eta_guesses(earlier))
        lease_seconds = self.settings.lease_seconds
        records = queue.trial_records(
            self.sessions, task.sweep_id, lease_seconds=lease_seconds, task_id=task.task_id
        )
        studies.close_orphans(
            study,
            spec,
            records,
            own_previous=task.optuna_trial_number,
            older_than=timedelta(seconds=lease_seconds),
        )
        trial, candidate = studies.ask(study, spec)

        def recorded() -> Candidate:
            if not queue.record_trial(self.sessions, task.task_id, self.worker_id, trial.number):
                studies.abandon(study, trial)
                raise TaskAbortedError(queue.Heartbeat.lost.value)
            return candidate

        self._agree(recorded)

        def on_batch(step: BatchStep) -> bool:
            def go_on() -> bool:
                self._check_here(lease)
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
        if not queue.complete_task(
            self.sessions, task, self.worker_id, result, plan=plan_trajectories
        ):
            log.warning("task %s was taken over by another worker; result dropped", task.task_id)
            studies.abandon(study, trial)
            return
        studies.finish(
            study, trial, spec, candidate.ratio, measured.measurements, pruned=measured.pruned
        )
        queue.finalize_sweep(self.sessions, task.sweep_id, recommend)

    def _compute_trajectory(self, task: queue.ClaimedTask, lease: _Lease) -> None:
        """K real steps on one candidate's mix; points are written as they are measured."""
        spec = task.spec
        assert task.candidate is not None  # trajectory tasks are created with their candidate
        candidate = task.candidate
        start = time.perf_counter()
        prepared, fresh = self._prepare(task, lease)
        study = studies.open_trajectory_study(
            self._storage(), task.study_name, spec, slot=task.slot, ratio=candidate.ratio
        )
        lease_seconds = self.settings.lease_seconds
        records = queue.trial_records(
            self.sessions,
            task.sweep_id,
            lease_seconds=lease_seconds,
            task_id=task.task_id,
            kind=TaskKind.trajectory,
        )
        studies.close_trajectory_orphans(
            study,
            records,
            own_previous=task.optuna_trial_number,
            older_than=timedelta(seconds=lease_seconds),
        )
        trial = study.ask()
        trial.suggest_float(studies.RATIO, 0.0, 1.0)

        def started() -> None:
            recorded = queue.record_trial(self.sessions, task.task_id, self.worker_id, trial.number)
            if not recorded or not queue.start_trajectory(self.sessions, task, self.worker_id):
                studies.abandon(study, trial)
                raise TaskAbortedError(queue.Heartbeat.lost.value)

        self._agree(started)

        def on_measure(step: int, points: list[PointResult]) -> bool:
            def go_on() -> bool:
                if not queue.record_points(
                    self.sessions, task, self.worker_id, candidate.ratio, step, points
                ):
                    lease.state = queue.Heartbeat.lost
                    raise TaskAbortedError("lost")
                return studies.report_trajectory(trial, spec, step, points)

            return self._agree(go_on)

        try:
            measured = run_trajectory(
                prepared, candidate, on_measure=on_measure, checkpoint=lambda: self._check(lease)
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
        if not queue.complete_trajectory(self.sessions, task, self.worker_id, result):
            log.warning("task %s was taken over by another worker; result dropped", task.task_id)
            studies.abandon(study, trial)
            return
        studies.finish_trajectory(study, trial, measured.ratio, pruned=measured.pruned)
        queue.finalize_sweep(self.sessions, task.sweep_id, recommend)

    def _cached(self, task: queue.ClaimedTask) -> PreparedSweep | None:
        """The sweep prepared for an earlier task, when it serves this one too."""
        if self._prepared is not None and self._prepared[0] == task.sweep_id:
            cached = self._prepared[1]
            if cached.gradients or task.kind != TaskKind.measure:
                return cached
        return None

    def _prepare(self, task: queue.ClaimedTask, lease: _Lease) -> tuple[PreparedSweep, bool]:
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
        prepared = self._load(task, lease, gradients=need_gradients and not stored)
        if stored and key is not None:
            kept = self.gradient_store.load(key, prepared.model)
            if kept is not None:
                prepared.gradients = kept
            else:  # unreadable after all: compute them
                prepared = self._load(task, lease, gradients=True)
        elif key is not None and need_gradients:
            self.gradient_store.save(key, prepared.model, prepared.gradients)
        self._prepared = (task.sweep_id, prepared)
        return prepared, True

    def _load(self, task: queue.ClaimedTask, lease: _Lease, *, gradients: bool) -> PreparedSweep:
        return prepare(
            task.spec,
            self.policy,
            device=self.device,
            dtype=self.dtype,
            micro_batch_tokens=self.micro_batch_tokens,
            checkpoint=lambda: self._check(lease),
            gradients=gradients,
            ranks=self.leader.ranks if self.leader is not None else None,
        )

    def _agree(self, decide: Callable[[], T]) -> T:
        """A decision every rank takes alike: here alone, or here and told to the other ranks."""
        return decide() if self.leader is None else self.leader.decide(decide)

    def _check(self, lease: _Lease) -> None:
        self._agree(lambda: self._check_here(lease))

    def _check_here(self, lease: _Lease) -> None:
        if lease.state != queue.Heartbeat.ok:
            raise TaskAbortedError(lease.state.value)
        if self.stop.is_set():
            raise TaskAbortedError("shutdown")

    def _aborted(self, task: queue.ClaimedTask, lease: _Lease) -> None:
        if lease.state == queue.Heartbeat.cancel:
            log.info("sweep %s cancelled", task.sweep_id)
            queue.cancel_sweep_tasks(self.sessions, task.sweep_id)
        elif lease.state == queue.Heartbeat.lost:
            log.warning("lost the lease on task %s; another worker has it", task.task_id)
        else:
            log.info("shutting down: task %s handed back", task.task_id)
            queue.release_task(self.sessions, task.task_id, self.worker_id)

    def _heartbeat(self, task: queue.ClaimedTask, lease: _Lease, done: threading.Event) -> None:
        while not done.wait(self.settings.heartbeat_seconds):
            try:
                lease.state = queue.heartbeat(self.sessions, task.task_id, self.worker_id)
            except Exception:  # a database hiccup: keep computing, the next beat may succeed
                log.exception("heartbeat for task %s failed", task.task_id)
            if lease.state != queue.Heartbeat.ok:
                return
