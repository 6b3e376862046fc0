"""The states of sweeps, tasks and deliveries, and the one table of their allowed moves.

States:
- a sweep is ``queued`` until a worker first claims one of its tasks, ``running`` until its last
  task is done, then ``succeeded``; ``failed`` when a task fails for good, ``cancelled`` on request.
  A succeeded sweep goes back to ``running`` when candidates are added to it (then succeeds again,
  or fails, or is cancelled, as its next edition); failed and cancelled are final for good.
- a task (one Optuna trial's worth of work: one ratio, all evaluation sets) is ``queued`` until a
  worker claims it, ``running`` while the worker heartbeats, ``done`` when its measurements are
  written. A running task whose heartbeat is older than the lease goes back to ``queued``.

The database layer stores them as short strings and takes the WHERE clause of every state write
from :data:`SWEEP_FROM` and :data:`TASK_FROM`; the API returns them as they are.
"""

from __future__ import annotations

import enum


class SweepState(enum.StrEnum):
    """Lifecycle of a sweep."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        """True once no worker will do anything more for the sweep (a succeeded one may still be
        reopened by adding candidates)."""
        return self in (SweepState.succeeded, SweepState.failed, SweepState.cancelled)


class TaskState(enum.StrEnum):
    """Lifecycle of one task of a sweep."""

    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class TaskKind(enum.StrEnum):
    """What a task computes."""

    measure = "measure"
    trajectory = "trajectory"


# The one state machine: for each state a sweep or task may be moved to, the states it may come
# from. Every UPDATE of a state in ``service/db`` takes its WHERE clause from here, so a write
# from a state not listed (a done task failed by a stalled worker, a finished sweep succeeded
# again) matches no row instead of corrupting the record.
SWEEP_FROM: dict[SweepState, frozenset[SweepState]] = {
    # succeeded -> running: candidates were added to a finished sweep (issue 11, part 5); it
    # succeeds again once they are measured.
    SweepState.running: frozenset({SweepState.queued, SweepState.succeeded}),
    SweepState.succeeded: frozenset({SweepState.running}),
    SweepState.failed: frozenset({SweepState.queued, SweepState.running}),
    SweepState.cancelled: frozenset({SweepState.queued, SweepState.running}),
}
TASK_FROM: dict[TaskState, frozenset[TaskState]] = {
    # running -> running is the takeover of a task whose worker stopped heartbeating.
    TaskState.running: frozenset({TaskState.queued, TaskState.running}),
    TaskState.queued: frozenset({TaskState.running}),
    TaskState.done: frozenset({TaskState.running}),
    TaskState.failed: frozenset({TaskState.running}),
    TaskState.cancelled: frozenset({TaskState.queued, TaskState.running}),
}


def sweep_may_move(source: SweepState, target: SweepState) -> bool:
    """True when a sweep in ``source`` may be moved to ``target``."""
    return source in SWEEP_FROM.get(target, frozenset())


def task_may_move(source: TaskState, target: TaskState) -> bool:
    """True when a task in ``source`` may be moved to ``target``."""
    return source in TASK_FROM.get(target, frozenset())


class DeliveryState(enum.StrEnum):
    """Lifecycle of one delivery of a finished sweep's edition (a webhook POST, an MLflow run or
    the answer in the Optuna study)."""

    pending = "pending"  # due at ``next_attempt_at``; also while an attempt is in flight
    delivered = "delivered"
    failed = "failed"  # every attempt was spent, or the target is refused for good
    skipped = "skipped"  # nothing to deliver to (no notify_url and no tenant default)
    # Not sent: added candidates reopened the sweep before it went out; the sweep's next edition
    # is delivered when it ends.
    superseded = "superseded"


__all__ = [
    "SWEEP_FROM",
    "TASK_FROM",
    "DeliveryState",
    "SweepState",
    "TaskKind",
    "TaskState",
    "sweep_may_move",
    "task_may_move",
]
