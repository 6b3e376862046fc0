"""Measuring a model sharded over the processes of a group (FSDP2), with the one-process code.

A model too large for one GPU is sharded with PyTorch's FSDP2 (`fully_shard`): every parameter is
a DTensor whose local shard (a block of rows of dim 0) lives on one rank, and each forward
all-gathers a block's parameters just before the block runs. What measures curvature is
elementwise in the parameters, so it runs on the local shards with the one-process code:

- per-domain gradients: FSDP averages the ranks' gradients into each shard (reduce-scatter), so
  with equal rows per rank a shard holds that of the whole batch's mean-loss gradient;
- the mixed direction and the optimizer transform (SGD, Adam, AdamW, with or without state) are
  elementwise: on the shards they give the shards of the one-process direction;
- the exact perturbation `theta - eta * d` is `perturb.Perturbation` itself on the float32 shards
  (same arithmetic, one rounding), and the next forward's all-gather reads it; the shards are
  copied back bit for bit on every rank when the search ends, also after an error;
- the loss closure: each rank evaluates its rows of the batch, the ranks all-gather (mean loss,
  rows) and every rank sums them in rank order as `micro_batched_loss` sums micro-batches. That is
  the same float on every rank, so `critical_lr` takes identical decisions everywhere and every
  rank runs the same forwards (FSDP's collectives inside them stay matched); and it is bit for bit
  the loss one process computes over micro-batches of S/W rows (tests/workers/curvature/
  test_distributed.py). Other splits agree within float32 rounding of the loss, which can move
  a quadratic search's probes: eta_c then agrees within the bracket `tol`, not bit for bit, and
  the forward count may differ (bench/sharded_measure.py, tiny shape, one sequence a micro-batch:
  1.2% and 10 against 8 forwards between 1 and 2 ranks; with micro-batches of half the batch,
  identical).

The ranks exchange losses over a gloo group of their own (`Ranks.side`), apart from FSDP's
collectives. A rank whose loss function raises says so there (a NaN row), so every rank raises
`CurvatureError` together, each with its shards restored; when it raised inside FSDP's forward
the others are left in one of FSDP's collectives and every rank fails at the groups' timeout
(`join`'s `timeout`) instead, shards restored all the same; the groups are spent then, and the
process should exit. (On FSDP's own group the notice would meet another rank's all-gather, and
gloo aborts the process on the size mismatch.) A rank that dies is the launcher's: torchrun ends
the others; `sharpmix worker`'s launcher (`sharpmix/ranks.py`) lets rank 0 fail the task when its
next collective fails, then starts a fresh group.

Limits: the shards must be float32 or float64 (FSDP's master weights). A `MixedPrecisionPolicy`
with `param_dtype=torch.bfloat16` would round the step away in the all-gather (method.md,
"Precision"), so `shard_model` sets none; the `"fp32"` and `"compensated"` paths of `perturb`
swap or override whole tensors and do not apply to shards. Batches are (sequences, seq_len) token
ids with a multiple of the world size of sequences: equal rows per rank make the average of the
ranks' mean losses the batch's mean loss.
"""

from __future__ import annotations

import datetime
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from workers.curvature.errors import CurvatureError
from workers.curvature.measure import LossChange, loss_change, measure
from workers.curvature.mixture import DomainGradients, domain_gradients
from workers.curvature.search import CriticalLR, SearchMethod

__all__ = [
    "Ranks",
    "all_reduced_loss",
    "join",
    "local_tensors",
    "rank_rows",
    "reshard",
    "shard_model",
    "sharded_domain_gradients",
    "sharded_loss",
    "sharded_loss_change",
    "sharded_measure",
]

LossFn = Callable[[nn.Module, Tensor], Tensor]


@dataclass(frozen=True)
class Ranks:
    """The processes one model is sharded over.

    Attributes:
        group: FSDP's process group (NCCL on GPUs, gloo on CPU).
        side: A gloo group over the same ranks for the losses and the agreement check.
        rank: This process's rank in `group`.
        world: The number of ranks.
    """

    group: dist.ProcessGroup
    side: dist.ProcessGroup
    rank: int
    world: int

    def mesh(self, device_type: str) -> DeviceMesh:
        """The one-dimensional device mesh over `group`, for `shard_model`."""
        return DeviceMesh.from_group(self.group, device_type)


def join(
    backend: str | None = None,
    *,
    timeout: datetime.timedelta = datetime.timedelta(minutes=10),
    group: dist.ProcessGroup | None = None,
) -> Ranks:
    """Join the process group torchrun describes (`env://`) and open the side group.

    Start one process per GPU, e.g. `torchrun --standalone --nproc-per-node 4 script.py`; with
    `"nccl"` each rank takes the GPU `LOCAL_RANK` names. Every rank calls this at the same
    point. A group that exists already (`group`, or the default one when `init_process_group`
    was called) is used as it is; the side group gets `timeout` either way.

    Args:
        backend: `"nccl"` on GPUs, `"gloo"` on CPU; None lets torch choose (when it starts one).
        timeout: How long a collective may wait for a rank before every rank fails.
        group: FSDP's group; default: the default group.
    """
    if group is None:
        if not dist.is_initialized():
            if backend == "nccl":  # one GPU per rank: torchrun's LOCAL_RANK names it
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend, timeout=timeout)
        group = dist.group.WORLD
        assert group is not None
    ranks = dist.get_process_group_ranks(group)
    side = dist.new_group(ranks, timeout=timeout, backend="gloo")
    assert side is not None
    return Ranks(group, side, dist.get_rank(group), dist.get_world_size(group))


def shard_model(model: nn.Module, mesh: DeviceMesh | None = None) -> nn.Module:
    """Shard `model` in place with FSDP2 over the default process group (or `mesh`, e.g.
    `Ranks.mesh("cuda")`).

    Each transformer block (the classes in transformers' `_no_split_modules`) is its own unit, so
    one block's full parameters exist at a time; embeddings, final norm and head go with the root.
    Parameters keep their dtype: load the model in float32 (no mixed-precision policy, see the
    module docstring).
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def local_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The local shard of each DTensor (the storage FSDP all-gathers from); others unchanged."""
    with torch.no_grad():
        return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def rank_rows(batch: Tensor, ranks: Ranks) -> Tensor:
    """This rank's equal share of a (sequences, seq_len) batch: rows `rank*S/W ... (rank+1)*S/W`."""
    if batch.shape[0] % ranks.world:
        raise CurvatureError(
            f"a batch of {batch.shape[0]} sequences does not split evenly over {ranks.world} "
            f"ranks; use a multiple of {ranks.world} sequences per batch"
        )
    return batch.tensor_split(ranks.world)[ranks.rank]


def reshard(model: nn.Module) -> None:
    """Free every FSDP unit's gathered parameters, leaving the model's DTensor shards registered."""
    # FSDP keeps the root's parameters unsharded after a forward (it expects the backward next),
    # and while they are, `model.parameters()` are plain full tensors. Resharding registers the
    # DTensors again and makes the next forward all-gather, so it reads the perturbed shards.
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _gather(row: list[float], ranks: Ranks) -> Tensor:
    """Every rank's `row`, (world, len(row)) float64 in rank order, over the side group."""
    mine = torch.tensor(row, dtype=torch.float64)
    gathered = torch.empty(ranks.world * len(row), dtype=torch.float64)
    dist.all_gather_single(gathered, mine, group=ranks.side)
    return gathered.view(ranks.world, len(row))


def all_reduced_loss(loss_fn: LossFn, ranks: Ranks) -> LossFn:
    """A loss closure whose value is the whole batch's mean loss, identical on every rank.

    Args:
        loss_fn: `loss_fn(model, rows) -> scalar`, the mean loss of this rank's rows.
        ranks: The ranks the model is sharded over.

    Returns:
        `(model, rows) -> scalar`: the row-weighted mean over ranks, in the loss's dtype (at
        least float32), summed in rank order.
    """

    def loss(model: nn.Module, rows: Tensor) -> Tensor:
        failure: Exception | None = None
        dtype = torch.float32
        reshard(model)
        try:
            value = loss_fn(model, rows).detach()
            dtype = torch.promote_types(value.dtype, torch.float32)
            mine = [float(value), float(rows.shape[0])]
        except Exception as error:  # told to every rank below, then raised here too
            failure, mine = error, [math.nan, math.nan]
        finally:
            reshard(model)
        table = _gather(mine, ranks)  # (world, 2): mean loss, rows
        failed = [r for r, n in enumerate(table[:, 1].tolist()) if math.isnan(n)]
        if failed:
            raise CurvatureError(
                f"rank(s) {failed} could not compute the loss; every rank stops"
            ) from failure
        # Summed as `micro_batched_loss` sums its micro-batches: float32, in order, each mean
        # times its rows, over all rows. So W ranks of S/W rows give bit for bit the loss one
        # process computes over micro-batches of S/W rows (float32 losses; float64 stay float64).
        means = table[:, 0].to(dtype)
        total = torch.zeros((), dtype=dtype)
        for r in range(ranks.world):
            total = total + means[r] * int(table[r, 1])
        return total / int(table[:, 1].sum())

    return loss


def _check_shards(shards: Sequence[Tensor]) -> None:
    for i, t in enumerate(shards):
        if t.dtype not in (torch.float32, torch.float64):
            raise CurvatureError(
                f"parameter {i} is sharded in {t.dtype}; the sharded perturbation needs float32 "
                "shards (load the model in float32 and shard it without a mixed-precision policy)"
            )


def _check_agreement(result: CriticalLR, ranks: Ranks) -> None:
    """Every rank must have searched the same line; a difference means a broken closure."""
    table = _gather([result.lower, result.upper, result.eta, float(result.forwards)], ranks)
    if not all(torch.equal(row, table[0]) for row in table):
        raise CurvatureError(f"ranks ended the search differently: {table.tolist()}")


def _params(model: nn.Module, params: Sequence[Tensor] | None) -> list[Tensor]:
    reshard(model)
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    shards = local_tensors(params)
    _check_shards(shards)
    return shards


def sharded_measure(
    model: nn.Module,
    loss_fn: LossFn,
    direction: Sequence[Tensor],
    batch: Tensor,
    ranks: Ranks,
    *,
    lr_guess: float,
    tol: float = 1 / 16,
    max_steps: int = 40,
    method: SearchMethod = "quadratic",
    loss0: float | None = None,
    params: Sequence[Tensor] | None = None,
    slope: float | None = None,
    known: Sequence[tuple[float, float]] = (),
) -> CriticalLR:
    """`measure` on a sharded model: every rank calls it with the same arguments.

    Args:
        model: The FSDP2-sharded network (`shard_model`); every rank's shards are perturbed in
            place and restored bit-exactly, also when it raises.
        loss_fn: `loss_fn(model, rows) -> scalar`, the mean loss of some rows of the batch.
        direction: `d`, one DTensor (or local shard) per parameter in `params`.
        batch: The whole (sequences, seq_len) evaluation batch, the same on every rank.
        ranks: The ranks the model is sharded over (`join`).
        lr_guess, tol, max_steps, method, loss0, slope, known: As in `measure`.
        params: Parameters the direction belongs to (DTensors or their shards); default: those
            with `requires_grad`, in `model.parameters()` order.

    Returns:
        The search result, the same on every rank.

    Raises:
        CurvatureError: On every rank when any rank's loss function raised, or as `measure`.
    """
    shards = _params(model, params)
    result = measure(
        model,
        all_reduced_loss(loss_fn, ranks),
        local_tensors(direction),
        rank_rows(batch, ranks),
        lr_guess=lr_guess,
        tol=tol,
        max_steps=max_steps,
        method=method,
        loss0=loss0,
        params=shards,
        precision="exact",
        slope=slope,
        known=known,
    )
    _check_agreement(result, ranks)
    return result


def sharded_loss_change(
    model: nn.Module,
    loss_fn: LossFn,
    direction: Sequence[Tensor],
    batch: Tensor,
    ranks: Ranks,
    lr: float,
    *,
    loss0: float | None = None,
    params: Sequence[Tensor] | None = None,
) -> LossChange:
    """`loss_change` on a sharded model (arguments as in `sharded_measure`)."""
    return loss_change(
        model,
        all_reduced_loss(loss_fn, ranks),
        local_tensors(direction),
        rank_rows(batch, ranks),
        lr,
        loss0=loss0,
        params=_params(model, params),
        precision="exact",
    )


def measure_and_change(
    model: nn.Module,
    loss_fn: LossFn,
    direction: Sequence[Tensor],
    batch: Tensor,
    ranks: Ranks | None,
    *,
    lr_guess: float,
    tol: float,
    lr: float,
    loss0: float | None = None,
    params: Sequence[Tensor] | None = None,
) -> tuple[CriticalLR, LossChange]:
    """eta_c along ``direction`` on one batch and the one-step loss change at ``lr``.

    On the shards when ``ranks`` is given (every rank calls it alike), else `measure` and
    `loss_change` in this process. The change comes first, and its forward is also the search's
    first probe (`known=`): it shows the descent near which the search's own probes only tie
    ``L(theta)``, and gives the line's slope when ``lr`` is far below the root.
    """
    search: Callable[..., CriticalLR]
    if ranks is None:
        change = loss_change(model, loss_fn, direction, batch, lr, loss0=loss0, params=params)
        search = functools.partial(measure, model, loss_fn, direction, batch)
    else:
        change = sharded_loss_change(
            model, loss_fn, direction, batch, ranks, lr, loss0=loss0, params=params
        )
        search = functools.partial(sharded_measure, model, loss_fn, direction, batch, ranks)
    result = search(
        lr_guess=lr_guess, tol=tol, loss0=change.loss0, params=params, known=_as_probe(change)
    )
    return result, change


def _as_probe(change: LossChange) -> list[tuple[float, float]]:
    # A change at lr = 0 is L(theta) itself, not a probe of the line.
    return [(change.lr, change.loss)] if change.lr > 0 else []


def sharded_loss(model: nn.Module, loss_fn: LossFn, batch: Tensor, ranks: Ranks) -> float:
    """The whole batch's loss in eval mode under no_grad, the same float on every rank."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(all_reduced_loss(loss_fn, ranks)(model, rank_rows(batch, ranks)))
    finally:
        model.train(was)


def sharded_domain_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    domains: Sequence[Tensor],
    ranks: Ranks,
    *,
    micro_batch: int,
    params: Sequence[Tensor] | None = None,
) -> DomainGradients:
    """`domain_gradients` of whole (sequences, seq_len) batches, kept as local shards.

    Each rank backpropagates its rows in micro-batches of `micro_batch` sequences; FSDP averages
    the ranks' gradients into the shards. The result's `params` and `grads` are local shards, so
    `mixed_direction` and the optimizer transforms run on them as they are.
    """
    micro = [list(torch.split(rank_rows(batch, ranks), micro_batch)) for batch in domains]
    full = domain_gradients(model, loss_fn, micro, params=params)
    shards = local_tensors(full.params)
    grads = [
        # A domain that produced no gradient for a parameter came back as global-shape zeros.
        [
            t if isinstance(g, DTensor) else torch.zeros_like(s)
            for g, t, s in zip(row, local_tensors(row), shards, strict=True)
        ]
        for row in full.grads
    ]
    return DomainGradients(params=shards, grads=grads, backward_passes=full.backward_passes)
