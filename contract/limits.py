"""The operator's largest sizes of a sweep (:class:`Limits`, filled from the ``SHARPMIX_MAX_*``
settings) and the submit-time check against them (:func:`check_limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from contract.errors import LimitError

if TYPE_CHECKING:
    from contract.spec import SweepSpec


@dataclass(frozen=True)
class Limits:
    """The operator's largest sizes of a sweep, and the setting that raises each one."""

    max_batches: int
    max_batch_tokens: int
    max_seq_len: int
    max_ratios: int
    max_trajectory_steps: int
    max_trials: int
    max_eval_sets: int
    max_learning_rates: int = 32


def check_limits(spec: SweepSpec, limits: Limits) -> None:
    """Refuse a sweep above the operator's limits, naming the field and the limit.

    Raises:
        LimitError: when a size is above its ``SHARPMIX_MAX_*`` limit.
    """
    checks: list[tuple[str, float, int, str]] = [
        ("batches", spec.batches, limits.max_batches, "SHARPMIX_MAX_BATCHES"),
        ("batch_tokens", spec.batch_tokens, limits.max_batch_tokens, "SHARPMIX_MAX_BATCH_TOKENS"),
        ("seq_len", spec.seq_len, limits.max_seq_len, "SHARPMIX_MAX_SEQ_LEN"),
        ("ratios", len(spec.screen_ratios), limits.max_ratios, "SHARPMIX_MAX_RATIOS"),
        (
            "trajectory.steps",
            spec.trajectory.steps if spec.trajectory else 0,
            limits.max_trajectory_steps,
            "SHARPMIX_MAX_TRAJECTORY_STEPS",
        ),
        (
            "ratio_range.trials",
            spec.ratio_range.trials if spec.ratio_range else 0,
            limits.max_trials,
            "SHARPMIX_MAX_TRIALS",
        ),
        ("targets", len(spec.eval_sets()), limits.max_eval_sets, "SHARPMIX_MAX_EVAL_SETS"),
        (
            "learning_rate_range.points" if spec.learning_rate_range else "learning_rates",
            len(spec.rate_grid or []),
            limits.max_learning_rates,
            "SHARPMIX_MAX_LEARNING_RATES",
        ),
        ("mixes", len(spec.mixes or ()), limits.max_ratios, "SHARPMIX_MAX_RATIOS"),
        (
            "mix_search.trials",
            spec.mix_search.trials if spec.mix_search else 0,
            limits.max_trials,
            "SHARPMIX_MAX_TRIALS",
        ),
    ]
    for field, value, limit, variable in checks:
        if value > limit:
            raise LimitError(
                field, f"{value:g} is above this server's limit of {limit} (set by {variable})"
            )


__all__ = ["Limits", "check_limits"]
