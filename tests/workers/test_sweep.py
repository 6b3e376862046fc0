"""One sweep on a worker (workers/sweep.py): how batches become one eta_c and its interval, and
reference losses taken on the probes' precision path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from contract.spec import SweepSpec
from tests.conftest import SweepAssets
from workers.curvature import CriticalLR, measure, mixed_direction, summarize
from workers.data import LoadPolicy
from workers.sweep import _estimate, mix_weights, prepare


def result(eta: float, status: str = "ok") -> CriticalLR:
    return CriticalLR(
        lower=eta * 0.97,
        upper=eta * 1.03 if eta else 1e-12,
        eta=eta,
        sharpness=2 / eta if eta else math.inf,
        forwards=5,
        status=status,  # type: ignore[arg-type]
    )


def test_all_batches_found_an_eta() -> None:
    results = [result(1e-4), result(2e-4), result(1.5e-4), result(1.2e-4)]
    point, low, high = _estimate(results, summarize(results, warn=False))
    assert point == pytest.approx((1e-4 * 2e-4 * 1.5e-4 * 1.2e-4) ** 0.25)
    assert low is not None and high is not None and low < point < high


def test_batches_that_rise_at_once_are_not_dropped() -> None:
    results = [result(0.0, "increases_immediately")] * 3 + [result(2e-4)]
    point, low, high = _estimate(results, summarize(results, warn=False))
    assert point == 0.0 and low == 0.0 and high == 2e-4


def test_one_batch_has_no_interval() -> None:
    results = [result(3e-4)]
    assert _estimate(results, summarize(results, warn=False)) == (3e-4, 3e-4, 3e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_losses_share_the_probes_precision_path(
    sweep_assets: SweepAssets, tmp_path: Path, dtype: torch.dtype
) -> None:
    spec = SweepSpec.model_validate(sweep_assets.spec(ratios=[0.5], batches=1))
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(spec, policy, device="cpu", dtype=dtype)
    grads = prepared.gradients[0]
    direction = mixed_direction(grads, mix_weights(spec, 0.5), prepared.transform)
    for name, batches in prepared.eval_batches.items():
        own = measure(
            prepared.model,
            prepared.loss_fn,
            direction,
            batches[0],
            lr_guess=1e-3,
            params=grads.params,
        )
        # L(theta) computed by the search itself equals the stored one, bit for bit.
        assert own.loss0 == prepared.loss0[name][0]
