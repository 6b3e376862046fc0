"""One sweep on a worker (workers/sweep.py): how batches become one eta_c and its interval, and
reference losses taken on the probes' precision path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contract.spec import SweepSpec
from tests.conftest import SweepAssets
from workers.curvature import measure, mixed_direction
from workers.data import LoadPolicy
from workers.sweep import mix_weights, prepare


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
