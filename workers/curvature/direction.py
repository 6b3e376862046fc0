"""Update directions: what an optimizer step would do, read without taking it.

An optimizer step with learning rate `eta` moves the parameters `theta` to `theta - eta * d`. This
file computes `d` (method.md §1) from gradients and optimizer state without changing either:

    SGD            d = g' (+ momentum: mu * buf + (1 - dampening) * g', nesterov: g' + mu * buf')
                   with g' = g + wd * theta (coupled weight decay)
    Adam           d = m_hat / (sqrt(v_hat) + eps), moments updated by g + wd * theta (coupled)
    AdamW          d = wd * theta + m_hat / (sqrt(v_hat) + eps), moments updated by g (decoupled)
    AdamW, fresh   d = wd * theta + g / (|g| + eps)            (almost sign(g))

Torch's AdamW scales `theta *= 1 - lr * wd` and then subtracts `lr * m_hat / denom`; that is exactly
`theta - lr * d` with the `d` above, so one `d` serves every learning rate.

Two layers: pure functions (`sgd_direction`, `adam_direction`, `adamw_direction`) that take
parameters, gradients and state explicitly, and `update_direction(optimizer)` that reads them off a
`torch.optim` object. The pure functions are what the mixture path uses: it mixes per-domain
gradients first and applies the optimizer transform after (method.md §3).

Directions are computed in float32 by default (`dtype=`) whatever the parameter dtype, so a bf16
model's direction keeps its own relative precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.curvature.errors import CurvatureError

__all__ = [
    "AdamState",
    "adam_direction",
    "adamw_direction",
    "direction_params",
    "optimizer_parameters",
    "sgd_direction",
    "update_direction",
]


@dataclass
class AdamState:
    """Adam moments for a list of parameters, aligned with that list.

    Attributes:
        exp_avg: First moments `m` (one tensor per parameter, its shape).
        exp_avg_sq: Second moments `v`.
        steps: Steps taken so far, per parameter (torch keeps one counter per parameter).
        max_exp_avg_sq: Running maxima of `v` for amsgrad, else None.
    """

    exp_avg: list[Tensor]
    exp_avg_sq: list[Tensor]
    steps: list[int]
    max_exp_avg_sq: list[Tensor] | None = None


def _check_aligned(params: Sequence[Tensor], grads: Sequence[Tensor], what: str) -> None:
    if len(params) != len(grads):
        raise CurvatureError(
            f"{what}: got {len(params)} parameters but {len(grads)} gradients; "
            "pass one gradient per parameter, in the same order"
        )
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if p.shape != g.shape:
            raise CurvatureError(
                f"{what}: parameter {i} has shape {tuple(p.shape)} but its gradient has "
                f"shape {tuple(g.shape)}; pass gradients in the parameters' order"
            )
        if p.is_complex():
            raise CurvatureError(f"{what}: parameter {i} is complex; only real parameters work")


def sgd_direction(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    *,
    momentum_buffers: Sequence[Tensor | None] | None = None,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """SGD's update direction for explicit parameters, gradients and momentum buffers.

    Args:
        params: Parameters `theta`, any shapes.
        grads: Gradients, one per parameter, same shapes.
        momentum_buffers: Existing momentum buffers (None entries, or None: first step).
        momentum: `mu`; 0 disables momentum.
        dampening: `tau`; scales the new gradient by `1 - tau` (not on the first step, like torch).
        nesterov: Use the Nesterov look-ahead `g' + mu * buf'`.
        weight_decay: Coupled L2 coefficient added to the gradient.
        maximize: Ascend instead of descend (torch's `maximize`).
        dtype: Dtype of the returned directions.

    Returns:
        One direction per parameter such that `theta - lr * d` is SGD's step with rate `lr`.
    """
    _check_aligned(params, grads, "sgd_direction")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise CurvatureError("sgd_direction: nesterov needs momentum > 0 and dampening == 0")
    buffers = list(momentum_buffers) if momentum_buffers is not None else [None] * len(params)
    if len(buffers) != len(params):
        raise CurvatureError("sgd_direction: pass one momentum buffer (or None) per parameter")
    out = []
    for p, g, buf in zip(params, grads, buffers, strict=True):
        d = g.detach().to(dtype)
        if maximize:
            d = -d
        if weight_decay != 0:
            d = d + weight_decay * p.detach().to(dtype)
        if momentum != 0:
            # First step: torch seeds the buffer with g' itself, without dampening.
            new_buf = d if buf is None else momentum * buf.to(dtype) + (1 - dampening) * d
            d = d + momentum * new_buf if nesterov else new_buf
        out.append(d)
    return out


def adam_direction(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    *,
    state: AdamState | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    amsgrad: bool = False,
    maximize: bool = False,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Adam's (or AdamW's) update direction for explicit parameters, gradients and moments.

    Args:
        params: Parameters `theta`.
        grads: Gradients, one per parameter.
        state: Existing moments; None means a fresh optimizer (step 0, zero moments).
        betas: `(b1, b2)`.
        eps: Added to `sqrt(v_hat)`.
        weight_decay: Weight decay coefficient.
        decoupled_weight_decay: True for AdamW (`wd * theta` added to `d`), False for Adam
            (`wd * theta` added to the gradient before the moments).
        amsgrad: Use the running maximum of `v` (needs `state.max_exp_avg_sq` if state is given).
        maximize: Ascend instead of descend.
        dtype: Dtype of the computation and of the returned directions.

    Returns:
        One direction per parameter such that `theta - lr * d` is Adam's step with rate `lr`.
    """
    _check_aligned(params, grads, "adam_direction")
    b1, b2 = float(betas[0]), float(betas[1])
    if not (0 <= b1 < 1 and 0 <= b2 < 1) or eps < 0:
        raise CurvatureError(
            f"adam_direction: need 0 <= betas < 1 and eps >= 0, got {betas}, {eps}"
        )
    n = len(params)
    if state is not None and not (
        len(state.exp_avg) == len(state.exp_avg_sq) == len(state.steps) == n
    ):
        raise CurvatureError("adam_direction: state must hold one m, v and step per parameter")
    if state is not None and amsgrad and state.max_exp_avg_sq is None:
        raise CurvatureError("adam_direction: amsgrad with existing state needs max_exp_avg_sq")
    out = []
    for i, (p, grad) in enumerate(zip(params, grads, strict=True)):
        theta = p.detach().to(dtype)
        g = grad.detach().to(dtype)
        if maximize:
            g = -g
        if weight_decay != 0 and not decoupled_weight_decay:
            g = g + weight_decay * theta
        if state is None:
            m = (1 - b1) * g
            v = (1 - b2) * g * g
            t = 1
            v_max = v
        else:
            m = b1 * state.exp_avg[i].to(dtype) + (1 - b1) * g
            v = b2 * state.exp_avg_sq[i].to(dtype) + (1 - b2) * g * g
            t = state.steps[i] + 1
            v_max = v
            if amsgrad and state.max_exp_avg_sq is not None:
                v_max = torch.maximum(state.max_exp_avg_sq[i].to(dtype), v)
        # Bias correction for step t, exactly as torch: m / bc1 over sqrt(v) / sqrt(bc2) + eps.
        bc1 = 1 - b1**t
        bc2_sqrt = (1 - b2**t) ** 0.5
        d = (m / bc1) / (v_max.sqrt() / bc2_sqrt + eps)
        if weight_decay != 0 and decoupled_weight_decay:
            d = d + weight_decay * theta
        out.append(d)
    return out


def adamw_direction(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    *,
    state: AdamState | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    amsgrad: bool = False,
    maximize: bool = False,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """AdamW's update direction (decoupled weight decay); see `adam_direction` for the arguments.

    With `state=None` this is the fresh-AdamW direction `wd * theta + g / (|g| + eps)` that a user
    who fine-tunes from a checkpoint without optimizer state gets.
    """
    return adam_direction(
        params,
        grads,
        state=state,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=True,
        amsgrad=amsgrad,
        maximize=maximize,
        dtype=dtype,
    )


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Every parameter the optimizer holds, in param-group order (with or without a gradient)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _grads_for(
    optimizer: torch.optim.Optimizer, grads: Sequence[Tensor | None] | None
) -> list[Tensor | None]:
    params = optimizer_parameters(optimizer)
    if grads is None:
        return [p.grad for p in params]
    if len(grads) != len(params):
        raise CurvatureError(
            f"update_direction: the optimizer holds {len(params)} parameters but {len(grads)} "
            "gradients were given; pass one gradient (or None) per optimizer_parameters(optimizer)"
        )
    return list(grads)


def direction_params(
    optimizer: torch.optim.Optimizer, grads: Sequence[Tensor | None] | None = None
) -> list[Tensor]:
    """The parameters `update_direction` returns directions for (those with a gradient), in order.

    Args:
        optimizer: A torch optimizer.
        grads: Gradients aligned with `optimizer_parameters(optimizer)`; None reads `p.grad`.
    """
    pairs = zip(optimizer_parameters(optimizer), _grads_for(optimizer, grads), strict=True)
    return [p for p, g in pairs if g is not None]


def _scalar(value: object, name: str) -> float:
    if isinstance(value, Tensor):
        return float(value.item())
    if isinstance(value, int | float):
        return float(value)
    raise CurvatureError(f"update_direction: option {name}={value!r} is not a number")


def update_direction(
    optimizer: torch.optim.Optimizer,
    grads: Sequence[Tensor | None] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """The direction `d` of the optimizer's next step, without changing gradients or state.

    Args:
        optimizer: `torch.optim.SGD`, `torch.optim.Adam` or `torch.optim.AdamW` (exactly these
            classes; a subclass may change `step()`, so it is refused).
        grads: Gradients to use instead of `p.grad`, aligned with `optimizer_parameters(optimizer)`
            (None entries are skipped). The mixture path passes mixed gradients here.
        dtype: Dtype of the returned directions.

    Returns:
        One direction per parameter with a gradient, in parameter-group order; `theta - lr * d` is
        what `optimizer.step()` would produce with learning rate `lr`.

    Raises:
        CurvatureError: For any other optimizer class, or an option it cannot reproduce.
    """
    kind = type(optimizer)
    if kind not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        raise CurvatureError(
            f"update_direction supports torch.optim.SGD, Adam and AdamW, not {kind.__name__}; "
            "compute the direction yourself or use sgd_direction/adam_direction"
        )
    all_grads = _grads_for(optimizer, grads)
    out: list[Tensor] = []
    offset = 0
    for group in optimizer.param_groups:
        group_params: list[Tensor] = list(group["params"])
        group_grads = all_grads[offset : offset + len(group_params)]
        offset += len(group_params)
        pairs = [(p, g) for p, g in zip(group_params, group_grads, strict=True) if g is not None]
        if not pairs:
            continue
        params = [p for p, _ in pairs]
        gs = [g for _, g in pairs]
        states = [optimizer.state.get(p, {}) for p in params]
        if kind is torch.optim.SGD:
            out += sgd_direction(
                params,
                gs,
                momentum_buffers=[s.get("momentum_buffer") for s in states],
                momentum=_scalar(group["momentum"], "momentum"),
                dampening=_scalar(group["dampening"], "dampening"),
                nesterov=bool(group["nesterov"]),
                weight_decay=_scalar(group["weight_decay"], "weight_decay"),
                maximize=bool(group["maximize"]),
                dtype=dtype,
            )
            continue
        amsgrad = bool(group["amsgrad"])
        fresh = [len(s) == 0 for s in states]
        if any(fresh) and not all(fresh):
            raise CurvatureError(
                "update_direction: some parameters of one Adam group have state and some do not; "
                "take a step for all of them or pass grads for the ones with state only"
            )
        state = None
        if not all(fresh):
            state = AdamState(
                exp_avg=[s["exp_avg"] for s in states],
                exp_avg_sq=[s["exp_avg_sq"] for s in states],
                steps=[int(_scalar(s["step"], "step")) for s in states],
                max_exp_avg_sq=[s["max_exp_avg_sq"] for s in states] if amsgrad else None,
            )
        # AdamW is Adam with decoupled_weight_decay=True in current torch; older torch has no key.
        decoupled = bool(group.get("decoupled_weight_decay", kind is torch.optim.AdamW))
        b1, b2 = group["betas"]
        out += adam_direction(
            params,
            gs,
            state=state,
            betas=(_scalar(b1, "betas"), _scalar(b2, "betas")),
            eps=_scalar(group["eps"], "eps"),
            weight_decay=_scalar(group["weight_decay"], "weight_decay"),
            decoupled_weight_decay=decoupled,
            amsgrad=amsgrad,
            maximize=bool(group["maximize"]),
            dtype=dtype,
        )
    return out
