"""The one-step loss change at every rate of a sweep's grid (issue 11, part 2).

eta_c does not depend on the planned rate, so a grid of rates needs no new search: only
``L(theta - lr d) - L(theta)`` at each further rate, one forward each, on the same direction and
evaluation batch as the planned rate's change (``L(theta)`` is the search's own).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from contract.rates import same_rate
from workers.curvature import loss_change
from workers.curvature.distributed import LossFn, Ranks, sharded_loss_change


def extra_rates(grid: Sequence[float] | None, planned: float) -> list[float]:
    """The grid's rates other than the planned one (whose change is measured anyway)."""
    return [lr for lr in grid or () if not same_rate(lr, planned)]


def changes_at(
    model: nn.Module,
    loss_fn: LossFn,
    direction: Sequence[Tensor],
    batch: Tensor,
    ranks: Ranks | None,
    rates: Sequence[float],
    *,
    loss0: float,
    params: Sequence[Tensor],
) -> tuple[list[float], int]:
    """``L(theta - lr d) - L(theta)`` for each rate, and the forward passes they cost.

    On the shards when ``ranks`` is given (every rank calls it alike), as the planned rate's.
    """
    deltas: list[float] = []
    forwards = 0
    for lr in rates:
        if ranks is None:
            change = loss_change(model, loss_fn, direction, batch, lr, loss0=loss0, params=params)
        else:
            change = sharded_loss_change(
                model, loss_fn, direction, batch, ranks, lr, loss0=loss0, params=params
            )
        deltas.append(change.delta)
        forwards += change.forwards
    return deltas, forwards


def mean_by_rate(
    planned: float, planned_changes: list[float], rates: list[float], per_rate: list[list[float]]
) -> list[tuple[float, float]]:
    """Per rate of the grid (planned included), ascending, the mean change over the batches.

    Args:
        planned: The planned rate; ``planned_changes`` are its changes per batch.
        rates: The further rates; ``per_rate[i]`` are rate ``i``'s changes per batch.
    """
    pairs = [(planned, sum(planned_changes) / len(planned_changes))]
    pairs += [(lr, sum(c) / len(c)) for lr, c in zip(rates, per_rate, strict=True) if c]
    return sorted(pairs)


__all__ = ["changes_at", "extra_rates", "mean_by_rate"]
