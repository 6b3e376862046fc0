"""What each spawned rank of the sharded sweep and trajectory tests (tests/workers/test_sweep.py,
tests/workers/test_trajectory.py) runs: load the sweep as a worker would, sharded over the ranks.

A module of its own so that `torch.multiprocessing.spawn` can import the rank functions by name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from contract.mix import Candidate
from contract.spec import SweepSpec
from tests.conftest import SweepAssets
from tests.workers.curvature.distributed_ranks import init
from workers.curvature.distributed import Ranks, local_tensors
from workers.data import LoadPolicy
from workers.sweep import PreparedSweep, prepare
from workers.trajectory import run_trajectory


def _prepare(
    ranks: Ranks,
    out: str,
    assets: SweepAssets,
    body: dict[str, Any],
    micro_batch_tokens: int,
    gradients: bool,
) -> PreparedSweep:
    spec = SweepSpec.model_validate(body)
    policy = LoadPolicy(allowed_roots=(assets.root,), cache_dir=Path(out) / f"cache{ranks.rank}")
    return prepare(
        spec,
        policy,
        device="cpu",
        dtype=torch.float32,
        micro_batch_tokens=micro_batch_tokens,
        gradients=gradients,
        ranks=ranks,
    )


def _leave(ranks: Ranks, out: str, seen: dict[str, Any]) -> None:
    (Path(out) / f"rank{ranks.rank}.json").write_text(json.dumps(seen))
    # Leaving together: a rank that tears down gloo while another still uses it can abort.
    dist.barrier(ranks.side)


def measure_rank(
    rank: int,
    world: int,
    rendezvous: str,
    out: str,
    assets: SweepAssets,
    body: dict[str, Any],
    ratios: list[float],
    micro_batch_tokens: int,
) -> None:
    """Prepare the sweep sharded (per-domain gradients on shards) and measure every ratio."""
    ranks = init(rank, world, rendezvous)
    try:
        prepared = _prepare(ranks, out, assets, body, micro_batch_tokens, gradients=True)
        before = [t.clone() for t in local_tensors(list(prepared.model.parameters()))]
        measured = [prepared.measure_ratio(Candidate(ratio)) for ratio in ratios]
        after = local_tensors(list(prepared.model.parameters()))
        seen = {
            "loss0": prepared.loss0,
            "backwards": prepared.backwards,
            "ratios": [
                {
                    "forwards": m.forwards,
                    "measurements": [dataclasses.asdict(r) for r in m.measurements],
                }
                for m in measured
            ],
            "restored": all(torch.equal(a, b) for a, b in zip(before, after, strict=True)),
        }
        _leave(ranks, out, seen)
    finally:
        dist.destroy_process_group()


def trajectory_rank(
    rank: int,
    world: int,
    rendezvous: str,
    out: str,
    assets: SweepAssets,
    body: dict[str, Any],
    ratio: float,
    micro_batch_tokens: int,
) -> None:
    """Prepare the sweep sharded and run one trajectory on it."""
    ranks = init(rank, world, rendezvous)
    try:
        prepared = _prepare(ranks, out, assets, body, micro_batch_tokens, gradients=False)
        model = prepared.model
        before = [t.clone() for t in local_tensors(list(model.parameters()))]
        result = run_trajectory(prepared, Candidate(ratio))
        after = local_tensors(list(model.parameters()))
        seen = {
            "points": [dataclasses.asdict(p) for p in result.points],
            "steps_done": result.steps_done,
            "pruned": result.pruned,
            "forwards": result.forwards,
            "backwards": result.backwards,
            "restored": all(torch.equal(a, b) for a, b in zip(before, after, strict=True)),
        }
        _leave(ranks, out, seen)
    finally:
        dist.destroy_process_group()
