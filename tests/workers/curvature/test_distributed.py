"""The sharded path (workers/curvature/distributed.py): two gloo ranks against one process.

The same tiny Llama and batches; the one-process numbers come from the existing code
(`domain_gradients`, `mixed_direction`, `measure`, `loss_change`) in this process, the sharded
ones from two spawned ranks that shard the model with FSDP2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests.workers.curvature.distributed_ranks import (
    FRESH_ADAMW,
    LR_GUESS,
    MICRO_BATCH,
    PLANNED_LR,
    RATIOS,
    ROWS,
    loss_fn,
    measure_rank,
    summary,
    tiny_batches,
    tiny_model,
)
from workers.curvature import domain_gradients, loss_change, measure, mixed_direction

pytestmark = pytest.mark.slow  # spawns processes (about 15 s on two CPU cores)


def _one_process() -> dict[str, Any]:
    model = tiny_model()
    batches = tiny_batches()
    model.train()
    grads = domain_gradients(
        model,
        loss_fn,
        [list(batches["pt"].split(MICRO_BATCH)), list(batches["ft"].split(MICRO_BATCH))],
    )
    model.eval()
    directions, results, changes = [], [], []
    for ratio in RATIOS:
        direction = mixed_direction(grads, [ratio, 1 - ratio], FRESH_ADAMW)
        result = measure(model, loss_fn, direction, batches["eval"], lr_guess=LR_GUESS)
        change = loss_change(
            model, loss_fn, direction, batches["eval"], PLANNED_LR, loss0=result.loss0
        )
        directions.append(direction)
        results.append(summary(result))
        changes.append(change.delta)
    return {"grads": grads.grads, "directions": directions, "results": results, "changes": changes}


def _same_search(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["status"] == b["status"]
    assert a["forwards"] == b["forwards"]
    assert a["loss0"] == pytest.approx(b["loss0"], rel=1e-6)
    assert len(a["probes"]) == len(b["probes"])
    for key in ("eta", "lower", "upper"):
        if math.isfinite(b[key]) and b[key] != 0:
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
        else:
            assert a[key] == b[key], key


def test_two_ranks_measure_what_one_process_measures(tmp_path: Path) -> None:
    reference = _one_process()
    torch.save(reference, tmp_path / "reference.pt")
    world = 2
    mp.spawn(measure_rank, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]

    # Pure fine-tuning data raises the held-out loss at once; the mixes have a real bracket.
    statuses = [r["status"] for r in reference["results"]]
    assert statuses == ["increases_immediately", "ok", "ok"], reference["results"]
    for seen in ranks:
        # The one-process direction on shards, and the direction built from sharded gradients.
        for sharded, one in zip(seen["same_direction"], reference["results"], strict=True):
            _same_search(sharded, one)
        for sharded, one in zip(seen["pipeline"], reference["results"], strict=True):
            _same_search(sharded, one)
        assert seen["loss_change"] == pytest.approx(reference["changes"], rel=1e-4, abs=1e-7)
        assert seen["grad_error"] < 1e-5
        assert seen["backward_passes"] == 2 * ROWS // (world * MICRO_BATCH)
        assert seen["restored"] and seen["restored_after_failure"]
        assert seen["failure"] is not None and "rank(s) [1]" in seen["failure"]
        # A failure inside FSDP's forward: every rank raises at the 3 s timeout, restored.
        assert seen["timeout_failure"]["restored"]
        assert seen["timeout_failure"]["error"] in {"RuntimeError", "CurvatureError"}
        assert 2.5 < seen["timeout_seconds"] < 30
    # Every rank took the very same decisions: identical floats, not just close ones.
    assert ranks[0]["pipeline"] == ranks[1]["pipeline"]
    assert ranks[0]["same_direction"] == ranks[1]["same_direction"]
