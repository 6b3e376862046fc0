"""The loss change at each rate of a grid, on the tiny model (issue 11, part 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contract.spec import SweepSpec
from tests.conftest import SweepAssets
from workers.data import LoadPolicy
from workers.sweep import prepare


def test_each_further_rate_costs_one_forward_and_matches_its_own_measurement(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    body = sweep_assets.spec(ratios=[0.5], batches=2)
    planned = body["learning_rate"]
    assert isinstance(planned, float)
    grid = [planned / 10, planned * 10]
    plain = SweepSpec.model_validate(body)
    gridded = SweepSpec.model_validate({**body, "learning_rates": grid})
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(plain, policy, device="cpu", dtype=torch.float32)
    without = prepared.measure_ratio(0.5)
    prepared.spec, prepared.warm = gridded, {}  # the same gradients and batches, with a grid
    with_grid = prepared.measure_ratio(0.5)

    sets = len(plain.eval_sets())
    # eta_c is not searched again per rate: one extra forward per rate, set and batch.
    assert with_grid.forwards - without.forwards == len(grid) * sets * plain.batches
    for a, b in zip(without.measurements, with_grid.measurements, strict=True):
        assert a.rate_loss_changes is None
        assert a.eta_c == b.eta_c and a.loss_change == b.loss_change
        assert b.rate_loss_changes is not None
        rates = [lr for lr, _ in b.rate_loss_changes]
        assert rates == sorted([*grid, planned])
        at_planned = dict(b.rate_loss_changes)[planned]
        assert at_planned == pytest.approx(b.loss_change)
    # The grid's own loss change at the planned rate, measured as a plain sweep at that rate.
    high = SweepSpec.model_validate({**body, "learning_rate": grid[1]})
    prepared.spec, prepared.warm = high, {}
    at_high = prepared.measure_ratio(0.5)
    for a, b in zip(at_high.measurements, with_grid.measurements, strict=True):
        assert b.rate_loss_changes is not None
        assert dict(b.rate_loss_changes)[grid[1]] == pytest.approx(a.loss_change, rel=1e-6)
