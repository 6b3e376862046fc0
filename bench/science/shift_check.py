"""CPU check of `lambda_max`'s shifted restart on a quadratic whose dominant eigenvalue is negative.

    .venv/bin/python -m bench.science.shift_check

The run-2 pre-training log has preconditioned `lambda_max` values of 0.09-0.29 next to values of
1e4-1e5. This reproduces the mechanism on a diagonal quadratic with 200,000 coordinates: a bulk
of small curvatures (mean 0.2), one eigenvalue -1e5 (largest in magnitude) and one +3e4 (the
answer). Writes `bench/science/results/shift_check.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.science.common import write_json
from workers.curvature import lambda_max

N = 200_000
NEGATIVE, LARGEST, BULK_MEAN = -1e5, 3e4, 0.2


class Point(nn.Module):
    """One parameter vector `x`; the loss is `x^T diag(d) x / 2`, so the Hessian is `diag(d)`."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(N))


def main() -> None:
    """Run `lambda_max` with two iteration budgets and write what it returns."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    diag = 0.1 * torch.randn(N, generator=gen) + BULK_MEAN
    diag[0], diag[1] = NEGATIVE, LARGEST

    def loss_fn(model: nn.Module, batch: Any) -> Tensor:
        x: Tensor = model.x  # type: ignore[assignment]
        return 0.5 * (diag * x**2).sum()

    runs = []
    for iterations in (30, 200):
        top = lambda_max(Point(), loss_fn, None, iterations=iterations, rtol=1e-3)
        runs.append(
            {
                "iterations_allowed": iterations,
                "value": top.value,
                "hvps": top.iterations,
                "converged": top.converged,
            }
        )
        print(runs[-1], flush=True)
    write_json(
        Path(__file__).parent / "results" / "shift_check.json",
        {
            "n": N,
            "negative_eigenvalue": NEGATIVE,
            "largest_eigenvalue": LARGEST,
            "bulk_mean": float(diag[2:].mean()),
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
