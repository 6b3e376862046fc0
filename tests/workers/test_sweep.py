"""One sweep on a worker (workers/sweep.py): how batches become one eta_c and its interval, and
reference losses taken on the probes' precision path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from contract.mix import Candidate
from contract.spec import SweepSpec
from tests.conftest import SweepAssets
from tests.workers.sweep_ranks import measure_rank
from workers.curvature import CurvatureError, measure, mixed_direction
from workers.data import DataError, LoadPolicy
from workers.sweep import _check_shardable, mix_weights, prepare


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_losses_share_the_probes_precision_path(
    sweep_assets: SweepAssets, tmp_path: Path, dtype: torch.dtype
) -> None:
    spec = SweepSpec.model_validate(sweep_assets.spec(ratios=[0.5], batches=1))
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(spec, policy, device="cpu", dtype=dtype)
    grads = prepared.gradients[0]
    direction = mixed_direction(grads, mix_weights(spec, Candidate(0.5)), prepared.transform)
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


@pytest.mark.slow  # spawns two processes that each load the sweep (about 15 s on two CPU cores)
def test_a_sweep_sharded_over_two_ranks_measures_what_one_process_does(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    # Two direction batches (the second warm-started), three ratios, two evaluation sets.
    body = sweep_assets.spec(ratios=[0.0, 0.5, 1.0], batches=2)
    spec = SweepSpec.model_validate(body)
    # Micro-batches of half a batch: each of two ranks then runs exactly one of the micro-batches
    # one process runs, and the sharded loss sums them the same way.
    half = spec.sequences_per_batch // 2 * spec.seq_len
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(spec, policy, device="cpu", dtype=torch.float32, micro_batch_tokens=half)
    one = [prepared.measure_ratio(Candidate(r)) for r in spec.ratios]
    world = 2
    args = (world, str(tmp_path / "rendezvous"), str(tmp_path), sweep_assets, body)
    mp.spawn(measure_rank, args=(*args, list(spec.ratios), half), nprocs=world)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]

    assert ranks[0] == ranks[1]  # every rank took the same decisions
    seen = ranks[0]
    assert seen["restored"]
    assert seen["backwards"] == prepared.backwards // world  # each rank: its half of the rows
    assert seen["loss0"] == prepared.loss0
    statuses = set()
    for sharded, single in zip(seen["ratios"], one, strict=True):
        assert sharded["forwards"] == single.forwards
        for got, want in zip(sharded["measurements"], single.measurements, strict=True):
            statuses.add(want.status)
            for a, b in zip(got["per_batch"], want.per_batch, strict=True):
                assert (a["status"], a["forwards"]) == (b.status, b.forwards)
                assert a["eta_c"] == pytest.approx(b.eta_c, rel=1e-5, abs=1e-12)
                assert a["loss_change"] == pytest.approx(b.loss_change, rel=1e-5, abs=1e-9)
            assert got["eta_c"] == pytest.approx(want.eta_c, rel=1e-5)
    assert "ok" in statuses


def test_a_sharded_sweep_refuses_bf16_weights_and_saved_optimizer_state() -> None:
    _check_shardable(torch.float32, None)
    with pytest.raises(CurvatureError, match="SHARPMIX_DTYPE=float32"):
        _check_shardable(torch.bfloat16, None)
    with pytest.raises(DataError, match=r"model\.optimizer_state"):
        _check_shardable(torch.float32, {"step": torch.tensor(1.0)})


def test_each_batch_search_starts_from_the_same_batch_of_the_last_ratio(
    sweep_assets: SweepAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.sweep as sweep_module

    spec = SweepSpec.model_validate(sweep_assets.spec(ratios=[0.3, 0.6], batches=2))
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(spec, policy, device="cpu", dtype=torch.float32)
    guesses: list[float] = []
    real = sweep_module.measure_and_change

    def recording(*args: object, **kwargs: object) -> object:
        guesses.append(float(kwargs["lr_guess"]))  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep_module, "measure_and_change", recording)
    first = prepared.measure_ratio(Candidate(0.3))
    guesses.clear()
    prepared.measure_ratio(Candidate(0.6))
    # Calls run batch by batch, and within a batch set by set (spec order).
    expected = [
        m.per_batch[b].eta_c if m.per_batch[b].status == "ok" else None
        for b in range(spec.batches)
        for m in first.measurements
    ]
    assert any(e is not None for e in expected)
    for guess, eta in zip(guesses, expected, strict=True):
        if eta is not None:
            assert guess == eta
    # Batches disagree, so a per-set warm start would have started batch 1 elsewhere.
    assert len({e for e in expected if e is not None}) > 1
