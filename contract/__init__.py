"""The contract between the API and the workers: what a sweep is, what a worker hands back,
what a sweep recommends and what the API returns.

It imports only pydantic and the standard library, so both sides (and the HTTP client) read it
without loading each other: the API and the database layer on one side, the workers on the
other. ``tools/check_imports.py`` keeps it that way.

- ``spec``: the request (:class:`SweepSpec`), built from ``refs`` (the model, the data sets and
  the roles of the evaluation sets), ``optimizers``, ``plan`` (the planned run's schedule and the
  trajectories), ``mix`` (k-domain mixes), ``rates`` (the rate grid) and ``quantities`` (the
  bounded numbers);
- ``limits``: the operator's :class:`Limits` and :func:`check_limits`;
- ``paths``: the one rule for a user's local path;
- ``results``: the measurements and trajectory points a worker hands back, with their status;
- ``recommendation``: the answer of a finished sweep;
- ``states``: the states of sweeps, tasks and deliveries and the table of allowed moves;
- ``wire``: the API's response models;
- ``errors``: the root :class:`ContractError`, which each side turns into its own error.
"""

from __future__ import annotations

from contract.errors import ContractError, LimitError, PathError
from contract.limits import Limits, check_limits
from contract.paths import resolve_under_roots
from contract.recommendation import RatioRank, Recommendation, SetForecast, TrajectoryVerdict
from contract.refs import RETENTION_ROLES, Role
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
from contract.spec import SweepSpec
from contract.states import DeliveryState, SweepState, TaskKind, TaskState

__all__ = [
    "RETENTION_ROLES",
    "BatchResult",
    "ContractError",
    "DeliveryState",
    "DoneTrial",
    "LimitError",
    "Limits",
    "MeasurementResult",
    "PathError",
    "PointResult",
    "RatioRank",
    "Recommendation",
    "Role",
    "SetForecast",
    "Status",
    "SweepSpec",
    "SweepState",
    "TaskKind",
    "TaskResult",
    "TaskState",
    "TrajectoryResult",
    "TrajectoryVerdict",
    "TrialRecords",
    "check_limits",
    "resolve_under_roots",
]
