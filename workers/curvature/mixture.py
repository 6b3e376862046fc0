"""Directions for data mixtures without a backward pass per mix (method.md §3).

The mean-token loss of a batch made of domains k with token fractions w_k is

    L(w) = sum_k w_k * L_k        so        g(w) = sum_k w_k * g_k

where `L_k` is domain k's own mean-token loss. One backward pass per domain (per micro-batch, for
batches larger than memory) gives every `g_k`; any simplex weights then cost a weighted sum, and the
optimizer transform (SGD, fresh AdamW's near-sign, AdamW with state) is applied after mixing, as
the optimizer would see the mixed batch's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from workers.curvature.direction import optimizer_parameters, update_direction
from workers.curvature.errors import CurvatureError

BatchT = TypeVar("BatchT")

__all__ = [
    "DirectionFn",
    "DomainGradients",
    "check_weights",
    "domain_gradients",
    "mix_gradients",
    "mixed_direction",
    "optimizer_transform",
    "stream_mixed_gradients",
]

# (params, grads) -> direction, e.g. functools.partial(adamw_direction, weight_decay=0.0).
DirectionFn = Callable[[Sequence[Tensor], Sequence[Tensor]], list[Tensor]]


@dataclass
class DomainGradients:
    """Mean-token-loss gradients of K domains for the same parameters.

    Attributes:
        params: The parameters (those that got a gradient from at least one domain).
        grads: `grads[k][i]` is domain k's gradient for `params[i]` (zeros where a domain
            produced none), in the chosen dtype and device.
        backward_passes: Backward passes spent collecting them.
    """

    params: list[Tensor]
    grads: list[list[Tensor]]
    backward_passes: int


def domain_gradients(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, BatchT], Tensor],
    domains: Sequence[Sequence[BatchT]],
    *,
    tokens: Callable[[BatchT], float] | None = None,
    params: Sequence[Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> DomainGradients:
    """One gradient per domain, with gradient accumulation over micro-batches.

    The model's existing `.grad` tensors are put back afterwards; its train/eval mode is used
    as set by the caller (train mode, like the optimizer's own backward, is the usual choice).

    Args:
        model: The network.
        loss_fn: `loss_fn(model, micro_batch) -> scalar Tensor`, the micro-batch's mean token loss.
        domains: For each domain, its batch as a list of micro-batches.
        tokens: Token count of a micro-batch, to weight micro-batches into the domain's mean-token
            loss (`n_i / N`); None weights them equally (right when they hold equal token counts).
        params: Parameters to collect; default: those with `requires_grad`.
        dtype: Storage dtype of the gradients.
        device: Storage device (e.g. "cpu" to keep GPU memory free); default: each parameter's.

    Returns:
        The per-domain gradients and the number of backward passes spent.
    """
    if not domains or any(len(micro) == 0 for micro in domains):
        raise CurvatureError("domains must be a non-empty list of non-empty micro-batch lists")
    ps = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in ps]
    per_domain: list[list[Tensor | None]] = []
    passes = 0
    try:
        for micro_batches in domains:
            for p in ps:
                p.grad = None
            counts = [float(tokens(mb)) if tokens is not None else 1.0 for mb in micro_batches]
            total = sum(counts)
            if not total > 0:
                raise CurvatureError("micro-batch token counts must sum to a positive number")
            for mb, n in zip(micro_batches, counts, strict=True):
                # Accumulates (n_i / N) * grad(mean_i): the gradient of the domain's mean loss.
                torch.autograd.backward(loss_fn(model, mb) * (n / total))
                passes += 1
            per_domain.append(
                [
                    None if p.grad is None else p.grad.detach().to(dtype=dtype, device=device)
                    for p in ps
                ]
            )
    finally:
        for p, g in zip(ps, saved, strict=True):
            p.grad = g
    keep = [i for i in range(len(ps)) if any(dom[i] is not None for dom in per_domain)]
    grads: list[list[Tensor]] = []
    for dom in per_domain:
        row = []
        for i in keep:
            g = dom[i]
            row.append(
                g
                if g is not None
                else torch.zeros(ps[i].shape, dtype=dtype, device=device or ps[i].device)
            )
        grads.append(row)
    return DomainGradients(params=[ps[i] for i in keep], grads=grads, backward_passes=passes)


def check_weights(weights: Sequence[float], k: int) -> list[float]:
    """Validate mixture weights: k finite numbers >= 0 that sum to 1 within 1e-6."""
    ws = [float(w) for w in weights]
    if len(ws) != k:
        raise CurvatureError(f"got {len(ws)} mixture weights for {k} domains; pass one per domain")
    if not all(math.isfinite(w) and w >= 0 for w in ws):
        raise CurvatureError(f"mixture weights must be finite and >= 0, got {ws}")
    if abs(sum(ws) - 1) > 1e-6:
        raise CurvatureError(f"mixture weights must sum to 1 (within 1e-6), got sum {sum(ws)!r}")
    return ws


def mix_gradients(grads: DomainGradients, weights: Sequence[float]) -> list[Tensor]:
    """`g(w) = sum_k w_k g_k`, one tensor per parameter (no backward pass)."""
    ws = check_weights(weights, len(grads.grads))
    mixed = []
    for i in range(len(grads.params)):
        acc = torch.zeros_like(grads.grads[0][i])
        for w, dom in zip(ws, grads.grads, strict=True):
            acc.add_(dom[i], alpha=w)
        mixed.append(acc)
    return mixed


def mixed_direction(
    grads: DomainGradients, weights: Sequence[float], transform: DirectionFn
) -> list[Tensor]:
    """The update direction for mixture weights: mix the gradients, then apply `transform`.

    Args:
        grads: Per-domain gradients.
        weights: Simplex weights, one per domain.
        transform: The optimizer transform, `(params, grads) -> direction`: e.g.
            `functools.partial(sgd_direction)`, `functools.partial(adamw_direction,
            weight_decay=0.0)` (fresh AdamW) or `optimizer_transform(optimizer)` (with state).

    Returns:
        One direction tensor per `grads.params`, on the parameters' device. Gradients kept on
        another device (CPU memory, when the K x B copies do not fit beside the model) are
        streamed in by `stream_mixed_gradients`.
    """
    device = grads.params[0].device
    if grads.grads[0][0].device == device:
        return transform(grads.params, mix_gradients(grads, weights))
    return transform(grads.params, stream_mixed_gradients(grads, weights, device))


def stream_mixed_gradients(
    grads: DomainGradients, weights: Sequence[float], device: torch.device
) -> list[Tensor]:
    """`g(w)` in float32 on `device`, from per-domain gradients kept elsewhere.

    One parameter at a time, each domain's share is copied in and added, so `device` holds one
    mixed gradient and one parameter's copy in flight, never the K domains' gradients (an
    OLMo-2-1B sweep with two domains and four batches holds 47 GB of them in CPU memory).
    Domains with weight 0 are not copied at all.
    """
    ws = check_weights(weights, len(grads.grads))
    mixed = []
    for i, param in enumerate(grads.params):
        acc = torch.zeros(param.shape, dtype=torch.float32, device=device)
        for w, domain in zip(ws, grads.grads, strict=True):
            if w:
                acc.add_(domain[i].to(device, non_blocking=True), alpha=w)
        mixed.append(acc)
    return mixed


def optimizer_transform(optimizer: torch.optim.Optimizer) -> DirectionFn:
    """A `DirectionFn` that applies `optimizer`'s transform (and state) to given gradients."""
    all_params = optimizer_parameters(optimizer)
    all_ids = {id(p) for p in all_params}

    def transform(params: Sequence[Tensor], grads: Sequence[Tensor]) -> list[Tensor]:
        by_id = {id(p): g for p, g in zip(params, grads, strict=True)}
        if len(by_id) != len(params) or any(id(p) not in all_ids for p in params):
            raise CurvatureError(
                "optimizer_transform: pass each parameter once, and only the optimizer's own"
            )
        aligned = [by_id.get(id(p)) for p in all_params]
        ordered = {id(p): i for i, p in enumerate(p for p in all_params if id(p) in by_id)}
        out = update_direction(optimizer, grads=aligned)
        # update_direction returns optimizer order; give it back in the caller's order.
        return [out[ordered[id(p)]] for p in params]

    return transform
