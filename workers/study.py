"""One Optuna study per sweep, in the sweep's own database (Optuna's RDB storage).

The study is named after the sweep (``sharpmix-<id>``), so ``optuna trials --study-name ...
--storage $SHARPMIX_DATABASE_URL`` and optuna-dashboard open it. Each task of a sweep is one trial:

- a candidate list fixes the trial's ratio (``PartialFixedSampler``); a range lets TPE choose it;
- objective ``flat_pretraining``: minimise the ratio subject to the flat-pre-training constraint
  ``log10(lr / lower bound of eta_c on retention sets) <= 0`` (feasible = in the basin);
- ``balanced``: maximise ``log10(min over sets of eta_c)``; ``pareto``: minimise the one-step
  fine-tuning and pre-training loss changes at the planned rate (two objectives);
- per-batch intermediate values (single-objective studies) feed a pruner that stops ratios that
  are clearly losing: for ``flat_pretraining`` one whose every retention set already rises at a
  quarter of the planned rate, for ``balanced`` Optuna's median rule.

Trajectory tasks have a study of their own (``sharpmix-<id>-trajectory``): one trial per ratio,
the largest retention drift at each measured step as its intermediate values, and a pruner that
stops a ratio once that drift is above the tolerance at two measurements in a row; the trial
minimises the ratio subject to ``upper end of the forecast retention drift - tolerance <= 0``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, PartialFixedSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from service.db.queue import MeasurementResult
from service.spec import SweepSpec
from workers.recommend import RETENTION_ROLES
from workers.trajectory import Trajectory, TrajectoryPoint

RATIO = "ratio"
CONSTRAINT_ATTR = "flat_pretraining_constraint"
CLEARLY_OUT_OF_BASIN = math.log10(4.0)


class BasinPruner(BasePruner):
    """Prune a flat-pre-training trial once the planned rate is clearly outside the basin.

    The reported value at step b is ``log10(lr / eta_c)`` of the smallest retention eta_c over the
    batches so far; above ``log10(4)`` for two batches in a row, the ratio cannot qualify.
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        values = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        return len(values) >= 2 and all(v > CLEARLY_OUT_OF_BASIN for v in values[-2:])


class DriftPruner(BasePruner):
    """Prune a trajectory once its retention drift is above the tolerance twice in a row."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        values = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        return len(values) >= 2 and all(v > self.tolerance for v in values[-2:])


def storage(url: str) -> RDBStorage:
    """Optuna's storage on the sweep database (waits on SQLite locks instead of failing)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    return RDBStorage(url, engine_kwargs=kwargs)


def open_study(
    store: RDBStorage, name: str, spec: SweepSpec, *, slot: int, ratio: float | None
) -> optuna.Study:
    """Create or load the sweep's study, with the sampler and pruner for this task.

    Args:
        store: The worker's one storage (see `storage`): building one per task would open a new
            engine and re-check Optuna's schema every time.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions: list[Literal["minimize", "maximize"]]
    if spec.objective == "pareto":
        directions = ["minimize", "minimize"]
    else:
        directions = ["maximize" if spec.objective == "balanced" else "minimize"]
    return optuna.create_study(
        study_name=name,
        storage=store,
        directions=directions,
        sampler=_sampler(spec, slot, ratio),
        pruner=_pruner(spec),
        load_if_exists=True,
    )


def ask(study: optuna.Study, spec: SweepSpec) -> tuple[optuna.Trial, float]:
    """Start the task's trial and read its ratio."""
    trial = study.ask()
    low, high = (
        (0.0, 1.0) if spec.ratio_range is None else (spec.ratio_range.low, spec.ratio_range.high)
    )
    return trial, trial.suggest_float(RATIO, low, high)


def report(trial: optuna.Trial, spec: SweepSpec, step: int, results: dict[str, float]) -> bool:
    """Report a batch's eta_c per set as the intermediate value; True means go on."""
    if spec.objective == "pareto":
        return True  # Optuna has no intermediate values for multi-objective studies.
    retention = [eta for name, eta in results.items() if spec.role(name) in RETENTION_ROLES]
    pool = retention if spec.objective == "flat_pretraining" else list(results.values())
    smallest = max(min(pool), 1e-30)
    value = (
        math.log10(spec.learning_rate / smallest)
        if spec.objective == "flat_pretraining"
        else math.log10(smallest)
    )
    trial.report(value, step)
    return not trial.should_prune()


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: SweepSpec,
    ratio: float,
    measurements: list[MeasurementResult],
    *,
    pruned: bool,
) -> None:
    """Finish the trial with the objective values of its measurements."""
    by_role: dict[str, list[MeasurementResult]] = {}
    for m in measurements:
        by_role.setdefault(m.role, []).append(m)
    lows = [m.eta_c_low or 0.0 for r in RETENTION_ROLES for m in by_role.get(r, [])]
    margin = math.log10(spec.learning_rate / max(min(lows, default=0.0), 1e-30))
    if spec.objective == "flat_pretraining":
        trial.set_constraint(CONSTRAINT_ATTR, margin)
    trial.set_user_attr(CONSTRAINT_ATTR, margin)
    trial.set_user_attr("forwards", sum(m.forwards for m in measurements))
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return
    if spec.objective == "flat_pretraining":
        study.tell(trial, ratio)
    elif spec.objective == "balanced":
        smallest = min((m.eta_c or 0.0) for m in measurements)
        study.tell(trial, math.log10(max(smallest, 1e-30)))
    else:
        ft = [m.loss_change or 0.0 for m in by_role.get("finetuning", [])]
        pt = [m.loss_change or 0.0 for m in by_role.get("pretraining", [])]
        study.tell(trial, [sum(ft) / max(len(ft), 1), sum(pt) / max(len(pt), 1)])


def abandon(study: optuna.Study, trial: optuna.Trial) -> None:
    """Close a trial whose task did not finish here (aborted, failed or taken over)."""
    study.tell(trial, state=TrialState.FAIL)


def fail_stale_trial(study: optuna.Study, number: int | None) -> None:
    """Close the trial of a worker that died mid-task, so the study shows no ghost RUNNING trial."""
    if number is None:
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.number == number:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def open_trajectory_study(
    store: RDBStorage, name: str, spec: SweepSpec, *, slot: int, ratio: float
) -> optuna.Study:
    """Create or load the sweep's trajectory study, with this task's ratio fixed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=f"{name}-trajectory",
        storage=store,
        direction="minimize",
        sampler=_sampler(spec, slot, ratio),
        pruner=DriftPruner(spec.tolerance),
        load_if_exists=True,
    )


def report_trajectory(trial: optuna.Trial, step: int, points: list[TrajectoryPoint]) -> bool:
    """Report a measured step's largest retention drift; True means go on."""
    drifts = [p.drift for p in points if p.role in RETENTION_ROLES]
    trial.report(max(drifts, default=0.0), step)
    return not trial.should_prune()


def tell_trajectory(
    study: optuna.Study, trial: optuna.Trial, spec: SweepSpec, result: Trajectory
) -> None:
    """Finish a trajectory's trial: its ratio, subject to the forecast staying in tolerance."""
    retention = [f for f in result.forecast if f.role in RETENTION_ROLES]
    high = max((f.high for f in retention), default=math.inf)
    margin = high - spec.tolerance if math.isfinite(high) else 1e9
    trial.set_constraint(CONSTRAINT_ATTR, margin)
    trial.set_user_attr(CONSTRAINT_ATTR, margin)
    trial.set_user_attr("steps_done", result.steps_done)
    trial.set_user_attr("forwards", result.forwards)
    for f in result.forecast:
        trial.set_user_attr(f"forecast_drift:{f.eval_set}", f.drift)
    if result.pruned:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, result.ratio)


def _sampler(spec: SweepSpec, slot: int, ratio: float | None) -> BaseSampler:
    # TPE reads the flat-pre-training constraint that `tell` sets on each trial.
    base = TPESampler(seed=spec.seed + slot, n_startup_trials=max(2, min(5, spec.slots // 3)))
    if ratio is None:
        return base
    with warnings.catch_warnings():  # experimental since Optuna 2.4, stable in use since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return PartialFixedSampler({RATIO: ratio}, base)


def _pruner(spec: SweepSpec) -> BasePruner:
    if spec.objective == "flat_pretraining":
        return BasinPruner()
    if spec.objective == "balanced" and spec.ratio_range is not None:
        return MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return NopPruner()


__all__ = [
    "DriftPruner",
    "abandon",
    "ask",
    "fail_stale_trial",
    "open_study",
    "open_trajectory_study",
    "report",
    "report_trajectory",
    "storage",
    "tell",
    "tell_trajectory",
]
