"""The planned fine-tuning run a sweep answers for: its learning-rate schedule
(:class:`ScheduleSpec`), and the real optimizer steps that rehearse it on each candidate mix
(:class:`TrajectorySpec`, method.md §9).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleSpec(_Strict):
    """The learning-rate schedule of the planned run; its peak is the sweep's `learning_rate`."""

    kind: Literal["constant", "cosine", "linear"] = Field(
        default="constant",
        description="constant, or after the warm-up a cosine or linear decay to "
        "min_lr_ratio x peak at planned_steps.",
    )
    warmup_steps: int = Field(
        default=0, ge=0, le=10_000_000, description="Linear warm-up from 0 to the peak."
    )
    min_lr_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Final rate of a decay, as a fraction of the peak.",
    )

    def lr_at(self, step: int, *, peak: float, total: int) -> float:
        """The rate of step ``step`` (0-based) of a ``total``-step run peaking at ``peak``."""
        if step < self.warmup_steps:
            return peak * (step + 1) / (self.warmup_steps + 1)
        if self.kind == "constant":
            return peak
        span = max(total - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        floor = self.min_lr_ratio
        if self.kind == "linear":
            return peak * (floor + (1.0 - floor) * (1.0 - progress))
        return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class TrajectorySpec(_Strict):
    """Real optimizer steps on each candidate mix, measured as they go (method.md §9)."""

    steps: int = Field(
        ge=1, le=1_000_000, description="K: optimizer steps taken on each candidate mix."
    )
    measure_every: int = Field(
        ge=1,
        le=1_000_000,
        description="m: every m steps (and at step 0 and K) the held-out loss, eta_c along the "
        "optimizer's current update direction and the one-step loss change of every evaluation "
        "set are recorded.",
    )
    ratios: int = Field(
        default=4,
        ge=1,
        le=16,
        description="With ratios 'auto': how many ratios of the quick screen get a trajectory, "
        "chosen around its boundary.",
    )
    precision: Literal["auto", "float32", "bf16_autocast"] = Field(
        default="auto",
        description="How the steps are computed: bf16 autocast over float32 master weights "
        "(auto on a GPU), or float32 throughout (auto on a CPU).",
    )
    accept: Literal["forecast", "interval"] = Field(
        default="forecast",
        description="Which forecast must stay within the tolerance for a ratio to be "
        "recommended: 'forecast', the point forecast of every guarded set's drift at N (the "
        "best estimate; a warning says when its interval reaches past the tolerance), or "
        "'interval', the upper end of each forecast's interval (the cautious answer: fewer "
        "ratios pass, so it tends to more pre-training data than needed).",
    )

    @model_validator(mode="after")
    def _every(self) -> TrajectorySpec:
        if self.measure_every > self.steps:
            raise ValueError(
                f"'measure_every' ({self.measure_every}) is above 'steps' ({self.steps}); "
                "measure at most every K steps"
            )
        return self


__all__ = ["ScheduleSpec", "TrajectorySpec"]
