"""What a worker hands back: the measurements of one ratio and the points of one trajectory.

Plain frozen dataclasses built by the workers and written by the queue (``service/db/queue.py``);
the queue reads them back for the Optuna trials of a sweep (``TrialRecords``). Status and role
are enums here and plain strings in the database and on the wire (``StrEnum`` compares equal to
its value, so either side reads the other).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from contract.recommendation import SetForecast
from contract.refs import Role


class Status(enum.StrEnum):
    """How the critical-learning-rate search of one evaluation set ended."""

    ok = "ok"  # the loss rose somewhere in the searched range: eta_c is bracketed
    increases_immediately = "increases_immediately"  # the loss rose even at the search floor
    no_increase = "no_increase"  # the loss never rose up to the search ceiling
    pruned = "pruned"  # the ratio was stopped before all its batches were measured
    loss_only = "loss_only"  # a trajectory's last point: the loss alone, no next update

    @classmethod
    def of_batches(cls, statuses: Iterable[str], *, pruned: bool = False) -> Status:
        """One status for a ratio's batches: the most telling one wins.

        A pruned ratio is ``pruned``; else one batch whose loss rose at once makes the ratio
        ``increases_immediately`` (its eta_c is 0 there), then one without an increase makes it
        ``no_increase``; otherwise ``ok``.
        """
        seen = set(statuses)
        if pruned:
            return cls.pruned
        for status in (cls.increases_immediately, cls.no_increase):
            if status in seen:
                return status
        return cls.ok


@dataclass(frozen=True)
class BatchResult:
    """One direction batch of one (ratio, evaluation set).

    Attributes:
        eta_c: The batch's critical learning rate.
        lower, upper: Its bracket (``upper`` None when the search found no finite one).
        status: How its search ended.
        forwards: Forward passes it cost.
        loss0: The evaluation batch's loss before the step.
        loss_change: One-step loss change at the planned rate.
    """

    eta_c: float
    lower: float
    upper: float | None
    status: Status
    forwards: int
    loss0: float
    loss_change: float


@dataclass(frozen=True)
class MeasurementResult:
    """One (ratio, evaluation set) summary, as the worker computed it."""

    eval_set: str
    role: Role
    status: Status
    eta_c: float | None
    eta_c_low: float | None
    eta_c_high: float | None
    sharpness: float | None
    spread: float | None
    loss: float
    loss_change: float | None
    forwards: int
    batches: int
    per_batch: list[BatchResult]
    # Issue 11, part 2: (rate, mean one-step loss change over the batches) per rate of the
    # spec's grid; None without a grid.
    rate_loss_changes: list[tuple[float, float]] | None = None
    # The measured mix: share of the whole mix per pre-training source and fine-tuning set.
    weights: dict[str, float] | None = None


@dataclass(frozen=True)
class TaskResult:
    """Everything a finished measurement task writes."""

    ratio: float
    measurements: list[MeasurementResult]
    forwards: int
    backwards: int
    seconds: float
    optuna_trial_number: int | None = None
    # Token and document counts of the direction sets (see PreparedSweep.sources), for exports.
    sources: dict[str, dict[str, int]] | None = None


@dataclass(frozen=True)
class PointResult:
    """One evaluation set at one step of a trajectory, as the worker measured it.

    Attributes:
        step: Optimizer steps taken before this measurement.
        lr: The rate of the next step (the planned schedule at ``step``).
        drift: ``loss - loss at step 0`` on the same held-out batch (positive: forgetting).
        eta_c, eta_c_low, eta_c_high: Critical learning rate along the optimizer's next update
            and its bracket (None where the search found no finite value).
        loss_change: ``L(theta_t - lr d_t) - L(theta_t)``: the next step's own effect.
        forwards: Forward passes this point cost.
    """

    step: int
    lr: float
    eval_set: str
    role: Role
    status: Status
    loss: float
    drift: float
    eta_c: float | None
    eta_c_low: float | None
    eta_c_high: float | None
    loss_change: float | None
    forwards: int


@dataclass(frozen=True)
class TrajectoryResult:
    """Everything a finished trajectory task writes beside its points."""

    ratio: float
    steps_done: int
    pruned: bool
    forecast: list[SetForecast]
    forwards: int
    backwards: int
    seconds: float
    optuna_trial_number: int | None = None


@dataclass(frozen=True)
class DoneTrial:
    """A finished task's Optuna trial, with what its task wrote (to close the trial from)."""

    number: int
    ratio: float
    measurements: list[MeasurementResult]
    pruned: bool


@dataclass(frozen=True)
class TrialRecords:
    """What a sweep's own rows say about its Optuna trials.

    Attributes:
        live: Trial numbers recorded by tasks that a worker holds with a lease that has not run
            out (other than the asking task): those trials are someone's work in progress.
        done: Trials recorded by done tasks, by number.
    """

    live: frozenset[int]
    done: dict[int, DoneTrial]
