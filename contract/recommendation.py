"""What a finished sweep recommends, with the evidence behind it (method.md §4 and §9).

Computed by the workers from a sweep's rows, stored by the database layer as JSON, and returned
by the API as it is.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from contract.rates import RateRegion
from contract.spec import Objective


class RatioRank(BaseModel):
    """One candidate ratio, ranked by the predicted growth of the pre-training loss."""

    ratio: float
    weights: dict[str, float] | None = Field(
        default=None,
        description="The candidate mix's share per pre-training source and fine-tuning set "
        "(its ratio is their pre-training total).",
    )
    pretraining_loss_change: float | None = Field(
        description="One-step change of the pre-training loss at the planned learning rate."
    )
    finetuning_loss_change: float | None = Field(
        description="One-step change of the (weighted) fine-tuning loss at the planned rate."
    )
    eta_c_pretraining_low: float | None = Field(
        description="Lower confidence bound of the critical learning rate on pre-training data."
    )
    min_eta_c: float | None = Field(description="Smallest critical learning rate over all sets.")
    in_basin: bool = Field(description="Planned rate below every retention set's lower bound.")


class SetForecast(BaseModel):
    """The forecast drift of one evaluation set at the planned run's length."""

    eval_set: str
    role: str
    steps: int = Field(description="The planned run's length N the forecast is for.")
    drift: float | None = Field(description="Point forecast of the loss change (nats).")
    low: float | None = Field(description="Lower end of its interval (None: unbounded).")
    high: float | None = Field(description="Upper end of its interval (None: unbounded).")
    measured: bool = Field(description="True when the trajectory reached N steps itself.")
    method: str = Field(description="How the forecast was fitted, in words.")


class TrajectoryVerdict(BaseModel):
    """What one ratio's trajectory says about the planned run."""

    ratio: float
    weights: dict[str, float] | None = Field(
        default=None,
        description="A listed k-domain mix's share per set (its ratio is their pre-training "
        "total); null when the ratio says the mix.",
    )
    steps_done: int = Field(description="Optimizer steps the trajectory took.")
    pruned: bool = Field(description="Stopped early: it had clearly left the basin.")
    retention_drift: float | None = Field(
        description="Largest forecast drift at N over the pre-training and retention sets."
    )
    retention_drift_high: float | None = Field(
        description="Upper end of that forecast's interval (None: unbounded)."
    )
    finetuning_gain: float | None = Field(
        description="Forecast fall of the (weighted) fine-tuning loss at N (positive: it learns)."
    )
    within_tolerance: bool = Field(
        description="Not pruned, and every retention forecast is within the tolerance: its "
        "point forecast, or the upper end of its interval with trajectory.accept 'interval'."
    )
    forecasts: list[SetForecast] = Field(default_factory=list)


class Recommendation(BaseModel):
    """What a finished sweep recommends, with the evidence (method.md §4 and §9)."""

    objective: Objective
    ratio: float | None = Field(description="Recommended fraction of pre-training tokens.")
    weights: dict[str, float] | None = Field(
        default=None,
        description="The recommended mix's share per pre-training source and fine-tuning set "
        "(for k-domain mixes the answer itself; 'ratio' is its pre-training total).",
    )
    reason: str
    basis: Literal["first_step", "trajectory"] = Field(
        default="first_step",
        description="first_step: from measurements at theta0 only (a first-step verdict); "
        "trajectory: from real optimizer steps on each mix, forecast to planned_steps.",
    )
    learning_rate: float = Field(description="The planned (peak) learning rate the answer is for.")
    planned_steps: int | None = Field(default=None, description="N, the planned run's length.")
    tolerance: float | None = Field(
        default=None, description="Largest acceptable rise of the retention losses (nats)."
    )
    forecast_drift: float | None = Field(
        default=None,
        description="Trajectory basis: the recommended ratio's largest forecast retention drift "
        "at N.",
    )
    forecast_drift_high: float | None = Field(
        default=None, description="Upper end of that forecast's interval."
    )
    finetuning_gain: float | None = Field(
        default=None,
        description="Trajectory basis: the recommended ratio's forecast fall of the fine-tuning "
        "loss at N.",
    )
    trajectories: list[TrajectoryVerdict] = Field(default_factory=list)
    in_basin: bool | None = Field(
        description="First-step verdict: whether the planned rate stays below the lower bound "
        "of eta_c on the pre-training and every retention set at theta0 (the first step leaves "
        "those losses flat; it says nothing of later steps)."
    )
    max_stable_lr: float | None = Field(
        description="Largest rate whose first step keeps the pre-training and every retention "
        "loss flat for the recommended mix: the smallest lower bound of eta_c over those sets "
        "(in_basin is exactly learning_rate < max_stable_lr)."
    )
    flat_ratio: float | None = Field(
        description="Smallest ratio whose lower bound of eta_c on every retention set exceeds "
        "the planned rate (None when no candidate does)."
    )
    balanced_ratio: float | None = Field(
        description="Ratio maximising the smallest eta_c over all evaluation sets, where the "
        "per-set curves cross (None when the maximum lies at an end of the candidates: the "
        "curves do not cross there)."
    )
    least_forgetting_ratio: float | None = Field(
        description="Smallest ratio whose predicted one-step pre-training loss change at the "
        "planned rate is not above the noise, while the fine-tuning loss still falls (the "
        "loss-change rule; method.md §7 finds the eta_c rule safe but conservative)."
    )
    confidence: Literal["high", "medium", "low"]
    ranking: list[RatioRank] = Field(default_factory=list)
    pareto_ratios: list[float] = Field(
        default_factory=list,
        description="Ratios on the front of (fine-tuning loss decrease, pre-training loss rise).",
    )
    warnings: list[str] = Field(default_factory=list)
    # Issue 11, part 2.
    rate_region: RateRegion | None = Field(
        default=None,
        description="With 'learning_rates' or 'learning_rate_range' in the spec: per ratio the "
        "largest rate that stays within the tolerance, the stable region over (ratio, rate) and "
        "the smallest stable ratio at each rate. None without a rate grid.",
    )
