"""What each spawned rank of the sharded trajectory test (tests/workers/test_trajectory.py) runs.

A module of its own so that `torch.multiprocessing.spawn` can import the rank function by name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from contract.spec import SweepSpec
from tests.conftest import SweepAssets
from tests.workers.curvature.distributed_ranks import init
from workers.curvature.distributed import local_tensors, shard_model
from workers.data import LoadPolicy
from workers.sweep import prepare
from workers.trajectory import run_trajectory


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
    """Load the sweep's model as a worker would, shard it, and run one trajectory on it."""
    ranks = init(rank, world, rendezvous)
    try:
        spec = SweepSpec.model_validate(body)
        policy = LoadPolicy(allowed_roots=(assets.root,), cache_dir=Path(out) / f"cache{rank}")
        prepared = prepare(
            spec,
            policy,
            device="cpu",
            dtype=torch.float32,
            micro_batch_tokens=micro_batch_tokens,
            gradients=False,
        )
        model = shard_model(prepared.model)
        before = [t.clone() for t in local_tensors(list(model.parameters()))]
        result = run_trajectory(prepared, ratio, ranks=ranks)
        after = local_tensors(list(model.parameters()))
        seen = {
            "points": [dataclasses.asdict(p) for p in result.points],
            "steps_done": result.steps_done,
            "pruned": result.pruned,
            "forwards": result.forwards,
            "backwards": result.backwards,
            "restored": all(torch.equal(a, b) for a, b in zip(before, after, strict=True)),
        }
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(seen))
        # Leaving together: a rank that tears down gloo while another still uses it can abort.
        dist.barrier(ranks.side)
    finally:
        dist.destroy_process_group()
