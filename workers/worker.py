"""The sweep worker: claim a task, compute it with no transaction open, write it, repeat.

This is the loop: the housekeeping passes, the claim, the heartbeat and the lease, and every
write to the queue. The task itself runs in a `TaskRunner` (`workers/runner.py`), which reads
and writes the task's rows only through the `TaskRows` this loop binds to the claim (`_Rows`).

A worker process runs one task at a time (one per GPU). While it computes, a heartbeat thread
renews the task's lease; the heartbeat also learns when the user cancelled the sweep or when the
lease was lost (the process stalled past the lease and another worker took the task over). Both,
and a shutdown request (SIGTERM), stop the computation at the next batch boundary: a cancelled
sweep ends, a lost task is left to its new owner, and on shutdown the task is handed back.

Over several devices (``SHARPMIX_DEVICES``), this loop is rank 0 of the worker's group and the
other ranks follow it (`workers/group.py`): it sends them each task it claims, its runner sends
every decision it takes, and it stops leading after a failed task, since the group may be spent.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass

import datasets
import torch
import transformers
from optuna.storages import RDBStorage
from safetensors import SafetensorError
from sqlalchemy.orm import Session, sessionmaker

from contract.results import (
    MeasurementResult,
    PointResult,
    TaskResult,
    TrajectoryResult,
    TrialRecords,
)
from contract.states import TaskKind
from service.config import Settings
from service.db import queue
from service.db.engine import Timeouts, make_engine, make_session_factory
from service.errors import DatabaseError, InvalidRequestError
from workers import study as studies
from workers.curvature import CurvatureError
from workers.data import DataError, LoadPolicy
from workers.gradient_store import GradientStore
from workers.group import Leader, Order
from workers.recommend import plan_trajectories, recommend
from workers.runner import TaskRunner
from workers.sweep import TaskAbortedError, default_micro_batch_tokens

log = logging.getLogger("sharpmix.worker")

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


@dataclass
class _Rows:
    """The claimed task's rows as its run reads and writes them (`workers.runner.TaskRows`):
    each call one short transaction, each write guarded by this worker's lease."""

    sessions: sessionmaker[Session]
    task: queue.ClaimedTask
    worker_id: str
    lease_seconds: float
    lease: _Lease

    def trial_records(self, kind: TaskKind) -> TrialRecords:
        return queue.trial_records(
            self.sessions,
            self.task.sweep_id,
            lease_seconds=self.lease_seconds,
            task_id=self.task.task_id,
            kind=kind,
        )

    def measured_points(self, sweep_id: str) -> list[tuple[float, list[MeasurementResult]]]:
        return queue.measured_points(self.sessions, sweep_id)

    def record_trial(self, number: int) -> bool:
        return queue.record_trial(self.sessions, self.task.task_id, self.worker_id, number)

    def start_trajectory(self) -> bool:
        return queue.start_trajectory(self.sessions, self.task, self.worker_id)

    def record_points(self, ratio: float, step: int, points: list[PointResult]) -> bool:
        if queue.record_points(self.sessions, self.task, self.worker_id, ratio, step, points):
            return True
        self.lease.state = queue.Heartbeat.lost  # the task is left to the worker that has it
        return False

    def complete(self, result: TaskResult) -> bool:
        return queue.complete_task(
            self.sessions, self.task, self.worker_id, result, plan=plan_trajectories
        )

    def complete_trajectory(self, result: TrajectoryResult) -> bool:
        return queue.complete_trajectory(self.sessions, self.task, self.worker_id, result)

    def finalize(self) -> None:
        queue.finalize_sweep(self.sessions, self.task.sweep_id, recommend)


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
        self._optuna: RDBStorage | None = None  # made on the first task, then reused
        device = leader.crew.device if leader else resolve_device(settings.device)
        self.runner = TaskRunner(
            device=device,
            dtype=torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32,
            micro_batch_tokens=settings.micro_batch_tokens or default_micro_batch_tokens(device),
            policy=load_policy(settings),
            gradient_store=GradientStore(
                settings.cache_dir / "gradients", settings.gradient_store_bytes
            ),
            storage=self._storage,
            lease_seconds=settings.lease_seconds,
            leader=leader,
        )
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
            self.runner.device,
            self.runner.dtype,
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
        self.runner.forget()
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
            reuse = self.runner.reuses(task)
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
            self._run(task, lease)
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

    def _run(self, task: queue.ClaimedTask, lease: _Lease) -> None:
        """Hand the task to the runner, with its rows and the lease's checkpoint."""
        rows = _Rows(self.sessions, task, self.worker_id, self.settings.lease_seconds, lease)
        run = self.runner.trajectory if task.kind == TaskKind.trajectory else self.runner.measure
        run(task, rows, functools.partial(self._check, lease))

    def _check(self, lease: _Lease) -> None:
        """Stop the task here when its lease is lost, its sweep cancelled or the worker stopping."""
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
