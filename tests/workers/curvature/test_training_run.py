"""Along real training runs: Edge of Stability and forwards per measurement with
warm starts, baseline vs model-placed search."""

from __future__ import annotations

import statistics

import pytest
import torch

from tests.workers.curvature.curvature_helpers import memorization_task, mse
from workers.curvature import CriticalLR, SearchMethod, measure

pytestmark = pytest.mark.unit


def _gd_run(
    lr: float, steps: int, every: int, methods: list[SearchMethod]
) -> dict[str, list[CriticalLR]]:
    """Full-batch GD; every `every` steps measure lambda_c along the GD direction d = g."""
    model, batch = memorization_task()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    results: dict[str, list[CriticalLR]] = {m: [] for m in methods}
    guess = {m: lr for m in methods}
    for step in range(steps):
        opt.zero_grad()
        mse(model, batch).backward()
        if step % every == 0:
            d = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            for m in methods:
                r = measure(model, mse, d, batch, lr_guess=guess[m], method=m)
                if r.status == "ok":
                    guess[m] = r.eta  # warm start
                results[m].append(r)
        opt.step()
    return results


@pytest.mark.slow
def test_edge_of_stability() -> None:
    lr = 0.2
    (run,) = _gd_run(lr, steps=1000, every=10, methods=["quadratic"]).values()
    ratio = [r.sharpness * lr / 2 for r in run]  # lambda_c / (2 / lr)
    # Progressive sharpening: starts well below the threshold ...
    assert statistics.mean(ratio[:3]) < 0.5
    # ... and then hovers at the Edge of Stability, lambda_c ~ 2/lr, within 20%.
    late = ratio[len(ratio) // 2 :]
    assert abs(statistics.mean(late) - 1) <= 0.2
    assert abs(statistics.median(late) - 1) <= 0.2


def test_forwards_with_warm_starts() -> None:
    runs = _gd_run(0.2, steps=300, every=3, methods=["bisect", "quadratic"])
    for results in runs.values():
        assert all(r.status == "ok" for r in results[1:])
        assert all(1 - r.lower / r.upper <= 1 / 16 for r in results if r.status == "ok")
    # Search forwards: the probes only; measure() spent one more forward on L(theta) each time.
    search = {m: [r.forwards - 1 for r in results] for m, results in runs.items()}
    assert statistics.median(search["bisect"]) <= 6  # the paper's figure
    assert statistics.median(search["quadratic"]) < statistics.median(search["bisect"])
    assert statistics.mean(search["quadratic"]) < statistics.mean(search["bisect"])
