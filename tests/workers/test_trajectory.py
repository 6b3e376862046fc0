"""Trajectory tasks (workers/trajectory.py): real steps on the mix, measured as they go."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from contract.mix import Candidate
from contract.results import PointResult, Status
from contract.spec import Role, SweepSpec
from tests.conftest import SweepAssets
from tests.workers.sweep_ranks import trajectory_rank
from workers.data import LoadPolicy
from workers.sweep import prepare
from workers.trajectory import (
    _counts,
    left_basin,
    planned_measure_steps,
    run_trajectory,
)


def _spec(assets: SweepAssets, **overrides: object) -> SweepSpec:
    body = assets.spec(
        ratios=[0.0, 1.0],
        batches=1,
        trajectory={"steps": 6, "measure_every": 3},
        planned_steps=20,
        learning_rate=3e-3,
    )
    body.update(overrides)
    return SweepSpec.model_validate(body)


def _prepared(assets: SweepAssets, tmp_path: Path, spec: SweepSpec, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    policy = LoadPolicy(allowed_roots=(assets.root,), cache_dir=tmp_path / "cache")
    return prepare(spec, policy, device="cpu", dtype=dtype, gradients=False)


def test_counts_keep_the_running_share_and_the_batch_size() -> None:
    owed = [0.0, 0.0, 0.0]
    weights = [0.05, 0.665, 0.285]
    total = [0, 0, 0]
    for _ in range(200):
        counts = _counts(weights, 16, owed)
        assert sum(counts) == 16
        total = [t + c for t, c in zip(total, counts, strict=True)]
    shares = [t / (200 * 16) for t in total]
    assert shares == pytest.approx(weights, abs=1 / (200 * 16))


def test_measure_steps_cover_zero_every_m_and_the_end() -> None:
    body = {
        "model": {"path": "m"},
        "pretraining": {"name": "a", "path": "a"},
        "finetuning": [{"name": "b", "path": "b"}],
        "ratios": [0.5],
        "learning_rate": 1e-4,
    }
    spec = SweepSpec.model_validate({**body, "trajectory": {"steps": 25, "measure_every": 10}})
    assert planned_measure_steps(spec) == [0, 10, 20, 25]
    short = SweepSpec.model_validate(
        {**body, "planned_steps": 12, "trajectory": {"steps": 25, "measure_every": 10}}
    )
    assert planned_measure_steps(short) == [0, 10, 12]  # N < K: stop at N, measure there


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trajectory_steps_measures_and_restores_the_model(
    sweep_assets: SweepAssets, tmp_path: Path, dtype: torch.dtype
) -> None:
    spec = _spec(sweep_assets)
    prepared = _prepared(sweep_assets, tmp_path, spec, dtype)
    before = {n: t.clone() for n, t in prepared.model.state_dict().items()}
    seen: list[int] = []
    result = run_trajectory(
        prepared, Candidate(0.0), on_measure=lambda step, pts: seen.append(step) or True
    )
    assert seen == [0, 3, 6]
    assert result.steps_done == 6 and not result.pruned
    assert result.backwards == 6
    names = {p.eval_set for p in result.points}
    assert names == {"general", "math"}
    first = [p for p in result.points if p.step == 0]
    assert all(p.drift == 0.0 for p in first)
    # Pure fine-tuning data at a high rate: the fine-tuning loss falls over six real steps.
    math_end = next(p for p in result.points if p.step == 6 and p.eval_set == "math")
    assert math_end.drift < 0
    # Measured points carry eta_c along the optimizer's current direction; the last has none.
    assert all(p.eta_c is not None or p.status != "ok" for p in result.points if p.step < 6)
    assert all(p.status == "loss_only" for p in result.points if p.step == 6)
    after = prepared.model.state_dict()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype
        assert torch.equal(after[name], tensor), name
    assert {f.eval_set for f in result.forecast} == {"general", "math"}
    assert all(f.steps == 20 and not f.measured for f in result.forecast)


def test_trajectory_mixes_pretraining_text_by_ratio(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    spec = _spec(sweep_assets)
    prepared = _prepared(sweep_assets, tmp_path, spec, torch.float32)
    pure_ft = run_trajectory(prepared, Candidate(0.0))
    pure_pt = run_trajectory(prepared, Candidate(1.0))

    def drift(result, name):  # type: ignore[no-untyped-def]
        return next(p.drift for p in result.points if p.step == 6 and p.eval_set == name)

    # Stepping on pre-training text forgets less of it than stepping on fine-tuning text alone.
    assert drift(pure_pt, "general") < drift(pure_ft, "general")
    assert drift(pure_ft, "math") < drift(pure_pt, "math")


def _points(step: int, drift: float, eta: float | None, lr: float) -> list[PointResult]:
    pt, ft, ok = Role.pretraining, Role.finetuning, Status.ok
    return [
        PointResult(step, lr, "general", pt, ok, 3.0 + drift, drift, eta, eta, eta, None, 5),
        PointResult(step, lr, "math", ft, ok, 2.0, -0.1, 1e-3, 1e-3, 1e-3, None, 5),
    ]


def test_left_basin_needs_three_measurements_above_the_tolerance_not_falling() -> None:
    body = {
        "model": {"path": "m"},
        "pretraining": {"name": "general", "path": "a"},
        "finetuning": [{"name": "math", "path": "b"}],
        "ratios": [0.5],
        "learning_rate": 1e-4,
        "tolerance": 0.05,
        "trajectory": {"steps": 60, "measure_every": 10},
    }
    spec = SweepSpec.model_validate(body)
    start = [_points(0, 0.0, 1e-3, 1e-4)]
    # The early jump of a mix with enough pre-training data: above the tolerance, then falling.
    jump = [*start, *(_points(s, d, 1e-3, 1e-4) for s, d in ((10, 0.08), (20, 0.07), (30, 0.06)))]
    assert left_basin(spec, jump) is None
    rising = [*start, *(_points(s, d, 1e-3, 1e-4) for s, d in ((10, 0.06), (20, 0.07), (30, 0.07)))]
    reason = left_basin(spec, rising)
    assert reason is None  # steps 10-15 lie in the burn-in: only 20 and 30 count
    rising.append(_points(40, 0.08, 1e-3, 1e-4))
    reason = left_basin(spec, rising)
    assert reason is not None and "tolerance" in reason and "steps 20-40" in reason
    twice = rising[:3]
    assert left_basin(spec, twice) is None
    # Within the burn-in (the first quarter of K = 60 steps: up to step 15) nothing counts.
    early = [*start, *(_points(s, d, 1e-3, 1e-4) for s, d in ((5, 0.06), (10, 0.07), (15, 0.08)))]
    assert left_basin(spec, early) is None
    # eta_c far below the rate (an immediate rise) is recorded, never a reason to prune.
    sharp = [*start, *(_points(s, 0.01, 0.0, 1e-4) for s in (10, 20, 30, 40))]
    assert left_basin(spec, sharp) is None


def test_left_basin_reads_the_trend_since_the_burn_in_not_two_endpoints() -> None:
    # Run 7's mix at ratio 0.5, lr 3e-4 on the grid's documents (tolerance 0.02, K = 100): it
    # jumped, then came back slowly with a wobble; the last three points tie at their ends
    # (0.029, 0.027, 0.029), which pruned it, although it ends flat by step 300.
    body = {
        "model": {"path": "m"},
        "pretraining": {"name": "general", "path": "a"},
        "finetuning": [{"name": "math", "path": "b"}],
        "ratios": [0.5],
        "learning_rate": 3e-4,
        "tolerance": 0.02,
        "trajectory": {"steps": 100, "measure_every": 10},
    }
    spec = SweepSpec.model_validate(body)
    seen = [(0, 0.0), (10, 0.026), (20, 0.039), (30, 0.034), (40, 0.035), (50, 0.029)]
    history = [_points(s, d, 1e-3, 3e-4) for s, d in seen]
    for step, drift in ((60, 0.027), (70, 0.029)):
        history.append(_points(step, drift, 1e-3, 3e-4))
        assert left_basin(spec, history) is None
    # The same levels on a trend that does not come down are pruned.
    flat = [(0, 0.0), (10, 0.026), (20, 0.027), (30, 0.028), (40, 0.028), (50, 0.029)]
    history = [_points(s, d, 1e-3, 3e-4) for s, d in [*flat, (60, 0.029), (70, 0.03)]]
    reason = left_basin(spec, history)
    assert reason is not None and "not trended down since step 30" in reason


@pytest.mark.slow  # spawns two processes that each load the sweep (about 15 s on two CPU cores)
def test_trajectory_on_two_ranks_is_the_one_process_trajectory(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    # Micro-batches of half a batch: each of two ranks then evaluates and backpropagates exactly
    # one of the micro-batches one process does, and the sharded loss sums them the same way.
    body = dict(_spec(sweep_assets).model_dump(mode="json"))
    spec = SweepSpec.model_validate(body)
    half = spec.sequences_per_batch // 2 * spec.seq_len
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(
        spec, policy, device="cpu", dtype=torch.float32, micro_batch_tokens=half, gradients=False
    )
    one = run_trajectory(prepared, Candidate(0.5))
    world = 2
    args = (world, str(tmp_path / "rendezvous"), str(tmp_path), sweep_assets, body, 0.5, half)
    mp.spawn(trajectory_rank, args=args, nprocs=world)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]

    assert ranks[0] == ranks[1]  # every rank took the same steps and the same decisions
    seen = ranks[0]
    assert seen["restored"]
    assert (seen["steps_done"], seen["pruned"]) == (one.steps_done, one.pruned)
    assert seen["backwards"] == one.backwards and seen["forwards"] == one.forwards
    assert len(seen["points"]) == len(one.points) == 6
    for sharded, single in zip(seen["points"], one.points, strict=True):
        assert (sharded["step"], sharded["eval_set"], sharded["status"]) == (
            single.step,
            single.eval_set,
            single.status,
        )
        assert sharded["forwards"] == single.forwards
        for name in ("loss", "drift", "eta_c", "eta_c_low", "eta_c_high", "loss_change"):
            a, b = sharded[name], getattr(single, name)
            if b is None or not math.isfinite(b) or b == 0:
                assert a == b, name
            else:
                assert a == pytest.approx(b, rel=1e-5, abs=1e-7), (name, single)
