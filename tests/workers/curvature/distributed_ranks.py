"""What each spawned rank of tests/workers/curvature/test_distributed.py runs (gloo on CPU).

A module of its own so that `torch.multiprocessing.spawn` can import the rank functions by name.
Each rank writes what it saw to `<out>/rank<r>.json`; the test compares that with one process.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import LlamaConfig, LlamaForCausalLM

from workers.curvature import (
    CriticalLR,
    CurvatureError,
    adamw_direction,
    mixed_direction,
)
from workers.curvature.distributed import (
    Ranks,
    join,
    local_tensors,
    shard_model,
    sharded_domain_gradients,
    sharded_loss_change,
    sharded_measure,
)
from workers.data import micro_batched_loss

RATIOS = (0.0, 0.5, 1.0)
LR_GUESS = 1e-3
PLANNED_LR = 3e-3
ROWS = 8  # sequences per batch
MICRO_BATCH = 4  # sequences per forward or backward: the rows of one rank of two
FRESH_ADAMW = functools.partial(adamw_direction, weight_decay=0.0)


def tiny_model() -> nn.Module:
    """A two-block Llama (GQA, RMSNorm, SwiGLU) with fixed init, in float32."""
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()


def tiny_batches() -> dict[str, Tensor]:
    """(ROWS, 17) token ids: a "pre-training" domain, a "fine-tuning" one, and a held-out batch."""
    g = torch.Generator().manual_seed(1)
    # Pre-training text uses the lower half of the vocabulary, fine-tuning text the upper half.
    return {
        "pt": torch.randint(0, 32, (ROWS, 17), generator=g),
        "ft": torch.randint(32, 64, (ROWS, 17), generator=g),
        "eval": torch.randint(0, 32, (ROWS, 17), generator=g),
    }


def loss_fn(model: nn.Module, rows: Tensor) -> Tensor:
    """Mean next-token loss of (S, T) rows, in micro-batches of `MICRO_BATCH` sequences.

    One process gets the whole batch (two micro-batches), each of two ranks its half (one): the
    sharded loss then is this very float (see `all_reduced_loss`).
    """
    return micro_batched_loss(model, rows, MICRO_BATCH)


def summary(result: CriticalLR) -> dict[str, Any]:
    """The parts of a search the test compares."""
    return {
        "eta": result.eta,
        "lower": result.lower,
        "upper": result.upper,
        "status": result.status,
        "forwards": result.forwards,
        "loss0": result.loss0,
        "probes": result.probes,
    }


def init(rank: int, world: int, rendezvous: str) -> Ranks:
    """One gloo group over a file rendezvous (no port to pick), and its side group."""
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world, timeout=timeout
    )
    return join(timeout=timeout)


def _shard_like(full: Tensor, param: Tensor) -> Tensor:
    assert isinstance(param, DTensor)
    return distribute_tensor(full, param.device_mesh, param.placements).to_local()


def measure_rank(rank: int, world: int, rendezvous: str, out: str) -> None:
    """Measure the tiny model sharded over `world` ranks; `out` holds the one-process reference."""
    ranks = init(rank, world, rendezvous)
    try:
        model = shard_model(tiny_model())
        batches = tiny_batches()
        params = [p for p in model.parameters() if p.requires_grad]
        before = [t.clone() for t in local_tensors(params)]
        reference = torch.load(Path(out) / "reference.pt")
        seen: dict[str, Any] = {"world": world}

        # 1. The one-process direction, sharded: the same line, searched on shards.
        seen["same_direction"] = []
        for full in reference["directions"]:
            direction = [_shard_like(d, p) for d, p in zip(full, params, strict=True)]
            result = sharded_measure(
                model, loss_fn, direction, batches["eval"], ranks, lr_guess=LR_GUESS
            )
            seen["same_direction"].append(summary(result))

        # 2. The whole sharded pipeline: per-domain gradients on shards, mixed, transformed.
        model.train()
        grads = sharded_domain_gradients(
            model, loss_fn, [batches["pt"], batches["ft"]], ranks, micro_batch=MICRO_BATCH
        )
        model.eval()
        seen["grad_error"] = max(
            float((g - _shard_like(full, p)).abs().max() / full.abs().max().clamp_min(1e-30))
            for dom, full_dom in zip(grads.grads, reference["grads"], strict=True)
            for g, full, p in zip(dom, full_dom, params, strict=True)
            if g.numel()
        )
        seen["backward_passes"] = grads.backward_passes
        seen["pipeline"], seen["loss_change"] = [], []
        for ratio in RATIOS:
            direction = mixed_direction(grads, [ratio, 1 - ratio], FRESH_ADAMW)
            result = sharded_measure(
                model,
                loss_fn,
                direction,
                batches["eval"],
                ranks,
                lr_guess=LR_GUESS,
                params=grads.params,
            )
            change = sharded_loss_change(
                model,
                loss_fn,
                direction,
                batches["eval"],
                ranks,
                PLANNED_LR,
                loss0=result.loss0,
                params=grads.params,
            )
            seen["pipeline"].append(summary(result))
            seen["loss_change"].append(change.delta)
        seen["restored"] = all(
            torch.equal(a, b) for a, b in zip(before, local_tensors(params), strict=True)
        )

        # 3. Rank 1's loss function raises on its third call, after the forward: every rank
        # stops with CurvatureError, its shards restored.
        calls = 0

        def failing(model: nn.Module, rows: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            loss = loss_fn(model, rows)
            if rank == 1 and calls == 3:
                raise RuntimeError("rank 1 ran out of luck")
            return loss

        direction = [
            _shard_like(d, p) for d, p in zip(reference["directions"][1], params, strict=True)
        ]
        try:
            sharded_measure(model, failing, direction, batches["eval"], ranks, lr_guess=LR_GUESS)
            seen["failure"] = None
        except CurvatureError as error:
            seen["failure"] = str(error)
        seen["restored_after_failure"] = all(
            torch.equal(a, b) for a, b in zip(before, local_tensors(params), strict=True)
        )

        # 4. Rank 1 raises *before* its forward: rank 0 waits in FSDP's all-gather, rank 1 in
        # the loss exchange. Both fail at the timeout (a fresh model on a group with a short
        # one), with their shards restored; nobody hangs and nobody aborts.
        seen["timeout_failure"], seen["timeout_seconds"] = _fail_before_forward(rank)
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(seen))
        # Leaving together: a rank that tears down gloo while another still uses it can abort.
        dist.barrier(ranks.side)
    finally:
        dist.destroy_process_group()


SHORT = datetime.timedelta(seconds=3)


def _fail_before_forward(rank: int) -> tuple[dict[str, Any], float]:
    ranks = join(group=dist.new_group(backend="gloo", timeout=SHORT), timeout=SHORT)
    model = shard_model(tiny_model(), mesh=ranks.mesh("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [t.clone() for t in local_tensors(params)]
    direction = [torch.full_like(t, 1e-3) for t in before]
    calls = 0

    def failing(model: nn.Module, rows: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if rank == 1 and calls == 3:
            raise RuntimeError("rank 1 failed before its forward")
        return loss_fn(model, rows)

    start = time.monotonic()
    error: BaseException | None = None
    try:
        sharded_measure(model, failing, direction, tiny_batches()["eval"], ranks, lr_guess=1e-3)
    except Exception as caught:
        error = caught
    seconds = time.monotonic() - start
    restored = all(torch.equal(a, b) for a, b in zip(before, local_tensors(params), strict=True))
    return {"error": type(error).__name__ if error else None, "restored": restored}, seconds
