"""One Optuna study per sweep, in the sweep's own database (Optuna's RDB storage).

The study is named after the sweep (``sharpmix-<id>``), so ``optuna trials --study-name ...
--storage $SHARPMIX_DATABASE_URL`` and optuna-dashboard open it. Each task of a sweep is one trial:

- a candidate list fixes the trial's ratio (``PartialFixedSampler``); a range lets TPE choose it;
- k-domain mixes: a listed mix fixes the trial's weights (``w:<set>``, by the task's slot); a
  ``mix_search`` lets TPE choose stick-breaking numbers (``u<j>``) that `contract.mix` maps into
  the bounded simplex; either way the task's ratio is the mix's pre-training total;
- objective ``flat_pretraining``: minimise the ratio subject to the flat-pre-training constraint
  ``log10(lr / lower bound of eta_c on retention sets) <= 0`` (feasible = in the basin); an
  infeasible trial's value is ``1 + margin``, so the best trial is the smallest feasible ratio;
- ``balanced``: maximise ``log10(min over sets of eta_c)``; ``pareto``: minimise the one-step
  fine-tuning and pre-training loss changes at the planned rate (two objectives);
- per-batch intermediate values (single-objective studies) feed a pruner that stops ratios that
  are clearly losing: for ``flat_pretraining`` one whose every retention set already rises at a
  quarter of the planned rate, for ``balanced`` Optuna's median rule.

Trajectory tasks have a study of their own (``sharpmix-<id>-trajectory``): one trial per ratio,
the largest retention drift at each measured step as its intermediate values, and a pruner that
stops a ratio once that drift has stayed above the tolerance at three measurements in a row
without coming down (the rule of `workers.trajectory.left_basin`); the trial
minimises the ratio subject to ``upper end of the forecast retention drift - tolerance <= 0``.
"""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timedelta
from typing import Any, Literal

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, PartialFixedSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from contract.mix import Candidate, domains, explicit_mix, search_dimensions, searched_mix
from contract.results import MeasurementResult, PointResult, TrialRecords
from contract.spec import RETENTION_ROLES, SweepSpec
from workers.trajectory import RISING_OVER, Trajectory

RATIO = "ratio"
WEIGHT = "w:"  # a listed mix's parameter per set: w:<name>
CONSTRAINT_ATTR = "flat_pretraining_constraint"
CONSTRAINTS_KEY = "constraints"
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
    """Prune a trajectory once its guarded drift has stayed above the tolerance, not falling, at
    the last three measured steps after the burn-in (the first quarter of the trajectory)."""

    def __init__(self, tolerance: float, burn_in: int = 0) -> None:
        self.tolerance = tolerance
        self.burn_in = burn_in

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        steps = [s for s in sorted(trial.intermediate_values) if s > self.burn_in]
        values = [trial.intermediate_values[s] for s in steps[-RISING_OVER:]]
        return (
            len(values) == RISING_OVER and min(values) > self.tolerance and values[-1] >= values[0]
        )


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


def ask(study: optuna.Study, spec: SweepSpec) -> tuple[optuna.Trial, Candidate]:
    """Start the task's trial and read its candidate: a ratio, or a k-domain mix's weights."""
    trial = study.ask()
    if spec.mixes is not None or spec.mix_search is not None:
        return trial, ask_mix(trial, spec)
    low, high = (
        (0.0, 1.0) if spec.ratio_range is None else (spec.ratio_range.low, spec.ratio_range.high)
    )
    return trial, Candidate(trial.suggest_float(RATIO, low, high))


def ask_mix(trial: optuna.Trial, spec: SweepSpec) -> Candidate:
    """The trial's mix: a listed one (its weights fixed by the sampler as ``w:<set>``) or a
    searched one (``u<j>`` stick-breaking numbers, `contract.mix.searched_mix`); the weights are
    stored as user attributes ``weight:<set>`` for optuna-dashboard."""
    if spec.mixes is not None:
        weights = {d.name: trial.suggest_float(WEIGHT + d.name, 0.0, 1.0) for d in domains(spec)}
    else:
        u = [trial.suggest_float(f"u{j}", 0.0, 1.0) for j in range(search_dimensions(spec))]
        weights = searched_mix(spec, u)
    for name, share in weights.items():
        trial.set_user_attr(f"weight:{name}", share)
    return Candidate.of_mix(spec, weights)


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


def annotate(trial: optuna.Trial, spec: SweepSpec, measurements: list[MeasurementResult]) -> None:
    """Store the trial's constraint and cost on the trial, before its task is completed.

    Done before the task's results are committed, so a trial whose worker dies between that
    commit and `finish` already carries everything but its state, and `close_orphans` can finish
    it from the sweep's own rows through the public ``study.tell``.
    """
    margin = _margin(spec, measurements)
    if spec.objective == "flat_pretraining":
        # The list under "constraints" is the format both Optuna and optuna-dashboard read;
        # Optuna 5's set_constraint writes "constraints:<name>", which the dashboard ignores.
        trial.storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, [margin])
    trial.set_user_attr(CONSTRAINT_ATTR, margin)
    trial.set_user_attr("forwards", sum(m.forwards for m in measurements))
    set_measurement_attrs(trial, measurements)


def finish(
    study: optuna.Study,
    trial: optuna.Trial | int,
    spec: SweepSpec,
    ratio: float,
    measurements: list[MeasurementResult],
    *,
    pruned: bool,
) -> None:
    """Finish the trial with the objective values of its measurements (no-op once finished)."""
    if pruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return
    study.tell(trial, _values(spec, ratio, measurements), skip_if_finished=True)


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: SweepSpec,
    ratio: float,
    measurements: list[MeasurementResult],
    *,
    pruned: bool,
) -> None:
    """`annotate` then `finish`: the trial of a task measured and completed in one go."""
    annotate(trial, spec, measurements)
    finish(study, trial, spec, ratio, measurements, pruned=pruned)


def _margin(spec: SweepSpec, measurements: list[MeasurementResult]) -> float:
    lows = [m.eta_c_low or 0.0 for m in measurements if m.role in RETENTION_ROLES]
    return math.log10(spec.learning_rate / max(min(lows, default=0.0), 1e-30))


def _values(
    spec: SweepSpec, ratio: float, measurements: list[MeasurementResult]
) -> float | list[float]:
    if spec.objective == "flat_pretraining":
        return flat_objective(ratio, _margin(spec, measurements))
    if spec.objective == "balanced":
        smallest = min((m.eta_c or 0.0) for m in measurements)
        return math.log10(max(smallest, 1e-30))
    ft = [m.loss_change or 0.0 for m in measurements if m.role == "finetuning"]
    pt = [m.loss_change or 0.0 for m in measurements if m.role == "pretraining"]
    return [sum(ft) / max(len(ft), 1), sum(pt) / max(len(pt), 1)]


def flat_objective(ratio: float, margin: float) -> float:
    """The flat-pre-training objective value: the ratio when feasible, else ``1 + margin``.

    Every infeasible trial ranks behind every feasible one (ratios lie in [0, 1]), so the study's
    best trial, which optuna-dashboard shows, is the smallest feasible ratio: the flat rule's
    answer, not the smallest ratio measured.
    """
    return ratio if margin <= 0 else 1.0 + margin


def set_measurement_attrs(trial: optuna.Trial, measurements: list[MeasurementResult]) -> None:
    """Per evaluation set: eta_c, its interval, the one-step loss change and the status, as
    user attributes (``<set>.eta_c``, ...) that optuna-dashboard lists beside each trial."""
    for m in measurements:
        values: dict[str, float | None] = {
            "eta_c": m.eta_c,
            "eta_c_low": m.eta_c_low,
            "eta_c_high": m.eta_c_high,
            "loss_change": m.loss_change,
            "loss": m.loss,
        }
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                trial.set_user_attr(f"{m.eval_set}.{name}", value)
        trial.set_user_attr(f"{m.eval_set}.status", m.status.value)


def abandon(study: optuna.Study, trial: optuna.Trial | int) -> None:
    """Close a trial whose task did not finish here (aborted, failed or taken over).

    A no-op when the trial is already closed: after a stall past the lease, the worker that
    took the task over has closed this trial already, and that is not an error of the sweep.
    """
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def close_orphans(
    study: optuna.Study,
    spec: SweepSpec,
    records: TrialRecords,
    *,
    own_previous: int | None,
    older_than: timedelta | None,
) -> list[int]:
    """Close the study's RUNNING trials that no worker is working on any more.

    A trial is an orphan when the sweep's rows say so: the asking task's previously recorded
    trial (its worker died), or, with ``older_than`` given, a trial started longer ago than that
    which no live task records (its worker died between ``ask`` and recording the number), or a
    trial whose task is done (its worker died between completing and telling), which is finished
    with the values its measurements give; every other orphan is closed as FAIL.
    ``older_than=None`` means no task of the sweep is live, so every RUNNING trial is an orphan.

    Returns:
        The numbers of the trials it closed.
    """
    now = datetime.now()
    closed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        number = trial.number
        started = trial.datetime_start
        expired = older_than is None or (started is not None and now - started >= older_than)
        done = records.done.get(number)
        if done is not None:
            # Its results are committed: the values are known, whoever tells them first.
            finish(study, number, spec, done.ratio, done.measurements, pruned=done.pruned)
        elif number == own_previous or (number not in records.live and expired):
            abandon(study, number)
        else:
            continue
        closed.append(number)
    return closed


def open_trajectory_study(
    store: RDBStorage, name: str, spec: SweepSpec, *, slot: int, ratio: float
) -> optuna.Study:
    """Create or load the sweep's trajectory study, with this task's ratio fixed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=f"{name}-trajectory",
        storage=store,
        direction="minimize",
        # The trajectory's ratio, also for a listed k-domain mix (its candidate's ratio).
        sampler=_with_fixed(spec, slot, {RATIO: ratio}),
        pruner=DriftPruner(spec.tolerance, burn_in=_burn_in(spec)),
        load_if_exists=True,
    )


def report_trajectory(
    trial: optuna.Trial, spec: SweepSpec, step: int, points: list[PointResult]
) -> bool:
    """Report a measured step's largest drift of a guarded set; True means go on."""
    drifts = [p.drift for p in points if spec.guarded(p.eval_set)]
    trial.report(max(drifts, default=0.0), step)
    return not trial.should_prune()


def annotate_trajectory(trial: optuna.Trial, spec: SweepSpec, result: Trajectory) -> None:
    """Store a trajectory's constraint, forecasts and cost on its trial, before completing it."""
    retention = [f for f in result.forecast if spec.guarded(f.eval_set)]
    high = max((f.high for f in retention), default=math.inf)
    margin = high - spec.tolerance if math.isfinite(high) else 1e9
    trial.storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, [margin])
    trial.set_user_attr(CONSTRAINT_ATTR, margin)
    trial.set_user_attr("steps_done", result.steps_done)
    trial.set_user_attr("forwards", result.forwards)
    for f in result.forecast:
        trial.set_user_attr(f"forecast_drift:{f.eval_set}", f.drift)


def finish_trajectory(
    study: optuna.Study, trial: optuna.Trial | int, ratio: float, *, pruned: bool
) -> None:
    """Finish a trajectory's trial: its ratio, or PRUNED (no-op once finished)."""
    if pruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        study.tell(trial, ratio, skip_if_finished=True)


def close_trajectory_orphans(
    study: optuna.Study,
    records: TrialRecords,
    *,
    own_previous: int | None,
    older_than: timedelta | None,
) -> list[int]:
    """`close_orphans` for the trajectory study: a done task's trial is finished from its row."""
    now = datetime.now()
    closed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        number = trial.number
        started = trial.datetime_start
        expired = older_than is None or (started is not None and now - started >= older_than)
        done = records.done.get(number)
        if done is not None:
            finish_trajectory(study, number, done.ratio, pruned=done.pruned)
        elif number == own_previous or (number not in records.live and expired):
            abandon(study, number)
        else:
            continue
        closed.append(number)
    return closed


def _burn_in(spec: SweepSpec) -> int:
    if spec.trajectory is None:
        return 0
    return min(spec.trajectory.steps, spec.planned_steps) // 4


def _sampler(spec: SweepSpec, slot: int, ratio: float | None) -> BaseSampler:
    """The measurement study's sampler for the task in ``slot``."""
    fixed: dict[str, Any] | None = {RATIO: ratio} if ratio is not None else None
    if spec.mixes is not None:
        # A listed mix is the slot's, whatever ratio its task row holds.
        fixed = {WEIGHT + name: w for name, w in explicit_mix(spec, slot).items()}
    elif spec.mix_search is not None:
        fixed = None
    return _with_fixed(spec, slot, fixed)


def _with_fixed(spec: SweepSpec, slot: int, fixed: dict[str, Any] | None) -> BaseSampler:
    # TPE reads the flat-pre-training constraint that `tell` sets on each trial.
    base = TPESampler(seed=spec.seed + slot, n_startup_trials=max(2, min(5, spec.slots // 3)))
    if fixed is None:
        return base
    with warnings.catch_warnings():  # experimental since Optuna 2.4, stable in use since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return PartialFixedSampler(fixed, base)


def _pruner(spec: SweepSpec) -> BasePruner:
    if spec.objective == "flat_pretraining":
        return BasinPruner()
    if spec.objective == "balanced" and (spec.ratio_range or spec.mix_search) is not None:
        return MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return NopPruner()


__all__ = [
    "DriftPruner",
    "abandon",
    "annotate",
    "annotate_trajectory",
    "ask",
    "close_orphans",
    "close_trajectory_orphans",
    "finish",
    "finish_trajectory",
    "flat_objective",
    "open_study",
    "open_trajectory_study",
    "report",
    "report_trajectory",
    "set_measurement_attrs",
    "storage",
    "tell",
]


# Issue 11, part 5: what a warm start (workers/reuse.py) needs to add an earlier sweep's ratios
# as finished trials, with the values and constraint a trial of this sweep would have.
objective_values = _values
constraint_margin = _margin
