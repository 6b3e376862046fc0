"""Critical sharpness of a real model: the line function and the search over it.

`measure` turns a model, a loss function, a direction and one evaluation batch into the line
function `eta -> L(theta - eta * d)` and runs `critical_lr` on it:

- the model is in `eval()` mode (no dropout) and under `torch.no_grad()` for the whole search, and
  its previous train/eval mode comes back afterwards;
- `L(theta)` and every probe see exactly the same `batch`;
- the perturbation is precision-safe (`perturb.Perturbation`) and the parameters are restored bit
  for bit, also when `loss_fn` raises.

Forward counting: `CriticalLR.forwards` from `measure` includes the `L(theta)` forward when
`measure` computed it, and excludes it when the caller passed `loss0` (e.g. `result.loss0` of an
earlier measurement on the same batch, model and precision).

A point of the line that the caller evaluated anyway (`known=`: the loss change at the planned
rate, which every sweep measures) enters the search as a probe that costs no forward: it shows
the descent that an `ok` verdict needs (near the root the loss only ties `L(theta)`, so without it
the search spends one more probe at `lower / 2`) and, far below the root, it gives the line's
slope as `(L(lr) - L(theta)) / lr`.

A known slope of the line, `dL/deta = -g.d` at `eta = 0` (`slope=`; `line_slope` from the gradient
`g` of the evaluation loss, one backward pass per evaluation batch, shared by every direction
measured on it), lets the search place its probes from the first one (see `search`).

For the critical sharpness, `batch` is data that produced `d`; for the relative critical sharpness
(`lambda_c^{mix->task}`) it is the other task's batch (method.md §2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from workers.curvature.errors import CurvatureError
from workers.curvature.perturb import Perturbation, Precision, check_direction
from workers.curvature.search import CriticalLR, SearchMethod, critical_lr

__all__ = ["LossChange", "line_slope", "loss_change", "measure"]

BatchT = TypeVar("BatchT")  # whatever loss_fn accepts: a tensor of token ids, a dict, ...


@dataclass(frozen=True)
class LossChange:
    """The loss change of one step at a given learning rate.

    Attributes:
        lr: The step size `eta`.
        loss0: `L(theta)`.
        loss: `L(theta - eta * d)`.
        delta: `loss - loss0` (positive: the step raises this loss).
        forwards: Forward passes spent (1 if `loss0` was given, else 2).
    """

    lr: float
    loss0: float
    loss: float
    delta: float
    forwards: int


def _resolve_params(
    model: nn.Module, params: Sequence[Tensor] | None, direction: Sequence[Tensor]
) -> list[Tensor]:
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    params = list(params)
    check_direction(params, direction)
    return params


def _scalar_loss(loss: Tensor) -> float:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise CurvatureError("loss_fn must return a scalar tensor (e.g. the mean token loss)")
    return float(loss.detach().float().item())


class _Evaluation:
    """The model in eval mode under no_grad, perturbed; restores mode and parameters on exit."""

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[Tensor],
        direction: Sequence[Tensor],
        precision: Precision,
    ) -> None:
        self.model = model
        self.was_training = model.training
        self.perturbation = Perturbation(model, params, direction, precision)
        self.no_grad = torch.no_grad()

    def __enter__(self) -> Perturbation:
        self.model.eval()
        self.no_grad.__enter__()
        try:
            return self.perturbation.__enter__()
        except BaseException:
            self.no_grad.__exit__(None, None, None)
            self.model.train(self.was_training)
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.perturbation.__exit__(None, None, None)
        finally:
            self.no_grad.__exit__(None, None, None)
            self.model.train(self.was_training)


def measure(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, BatchT], Tensor],
    direction: Sequence[Tensor],
    batch: BatchT,
    *,
    lr_guess: float,
    tol: float = 1 / 16,
    max_steps: int = 40,
    method: SearchMethod = "quadratic",
    loss0: float | None = None,
    params: Sequence[Tensor] | None = None,
    precision: Precision = "auto",
    slope: float | None = None,
    known: Sequence[tuple[float, float]] = (),
) -> CriticalLR:
    """Measure the critical learning rate of `model` along `direction` on one batch.

    Args:
        model: The network; its parameters are perturbed in place and restored bit-exactly.
        loss_fn: `loss_fn(model, batch) -> scalar Tensor`, e.g. the mean token loss.
        direction: `d`, one tensor per parameter in `params` (see `update_direction`).
        batch: The evaluation batch, passed unchanged to every forward.
        lr_guess: First step to try; the last `eta_c` for a warm start.
        tol: Relative bracket width at which the search stops.
        max_steps: Cap on doublings/halvings from `lr_guess`.
        method: `"quadratic"` or `"bisect"` (see `search`).
        loss0: `L(theta)` if already known on this batch, model and precision (saves a forward).
        params: Parameters the direction belongs to; default: those with `requires_grad`, in
            `model.parameters()` order.
        precision: `"auto"`, `"exact"`, `"fp32"`, `"split"` or `"compensated"` (see `perturb`).
        slope: `dL/deta` at `eta = 0`, i.e. `line_slope(grads, direction)` with the gradient of
            `loss_fn` on this batch; places probes only (see `critical_lr`).
        known: `(eta, loss)` points of this line already evaluated on this batch, model and
            precision, e.g. `(lr, change.loss)` of a `loss_change`: they enter the search as
            probes that cost no forward (see `critical_lr`).

    Returns:
        The search result; `forwards` includes the `L(theta)` forward when it was computed here.

    Raises:
        CurvatureError: For mismatched directions, bad search arguments or a non-scalar loss.
    """
    if not (math.isfinite(lr_guess) and lr_guess > 0):
        raise CurvatureError(f"lr_guess must be a finite number > 0, got {lr_guess}")
    if not 0 < tol < 1:
        raise CurvatureError(f"tol must lie in (0, 1), got {tol}; 1/16 is the default")
    resolved = _resolve_params(model, params, direction)
    with _Evaluation(model, resolved, direction, precision) as perturbation:

        def loss_at(eta: float) -> float:
            perturbation.set_step(eta)
            return _scalar_loss(loss_fn(model, batch))

        own = loss0 is None
        base = loss_at(0.0) if loss0 is None else float(loss0)
        result = critical_lr(
            loss_at,
            loss0=base,
            lr_guess=lr_guess,
            tol=tol,
            max_steps=max_steps,
            method=method,
            slope=slope,
            known=known,
        )
    return dataclasses.replace(result, forwards=result.forwards + int(own))


def loss_change(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, BatchT], Tensor],
    direction: Sequence[Tensor],
    batch: BatchT,
    lr: float,
    *,
    loss0: float | None = None,
    params: Sequence[Tensor] | None = None,
    precision: Precision = "auto",
) -> LossChange:
    """The one-step loss change `L(theta - lr * d) - L(theta)` at a planned learning rate.

    Same evaluation rules as `measure` (eval mode, no_grad, same batch, bit-exact restore). Pass
    `loss0=result.loss0` from a `measure` on the same batch to spend one forward instead of two.

    Args:
        model: The network.
        loss_fn: `loss_fn(model, batch) -> scalar Tensor`.
        direction: `d`, one tensor per parameter in `params`.
        batch: The evaluation batch.
        lr: The planned learning rate (>= 0).
        loss0: `L(theta)` if known.
        params: Parameters the direction belongs to (default as in `measure`).
        precision: As in `measure`.

    Returns:
        The loss before and after the step and their difference.
    """
    if not (math.isfinite(lr) and lr >= 0):
        raise CurvatureError(f"lr must be a finite number >= 0, got {lr}")
    resolved = _resolve_params(model, params, direction)
    with _Evaluation(model, resolved, direction, precision) as perturbation:
        forwards = 0
        if loss0 is None:
            perturbation.set_step(0.0)
            loss0 = _scalar_loss(loss_fn(model, batch))
            forwards += 1
        perturbation.set_step(lr)
        loss = _scalar_loss(loss_fn(model, batch))
        forwards += 1
    return LossChange(lr, float(loss0), loss, loss - float(loss0), forwards)


def line_slope(grads: Sequence[Tensor], direction: Sequence[Tensor]) -> float:
    """`dL/deta` of `L(theta - eta * d)` at `eta = 0`: `-g.d` (float32 or wider per chunk of a
    tensor, summed in float64).

    Args:
        grads: The gradient `g` of the evaluation loss, one tensor per parameter (any float dtype,
            e.g. from `domain_gradients` on the evaluation batch with the model in eval mode).
        direction: `d`, aligned with `grads`.

    Returns:
        The slope (negative for a descent direction).
    """
    if len(grads) != len(direction):
        raise CurvatureError(
            f"got {len(grads)} gradient tensors for {len(direction)} direction tensors; "
            "pass them for the same parameters in the same order"
        )
    total = 0.0
    chunk = 1 << 24  # bounds the float32 temporaries of the largest tensors (embeddings)
    for i, (g, d) in enumerate(zip(grads, direction, strict=True)):
        if g.shape != d.shape:
            raise CurvatureError(
                f"gradient {i} has shape {tuple(g.shape)} but direction {i} {tuple(d.shape)}"
            )
        gf, df = g.reshape(-1), d.reshape(-1).to(g.device)
        wide = torch.promote_types(torch.promote_types(g.dtype, d.dtype), torch.float32)
        for start in range(0, gf.numel(), chunk):
            a = gf[start : start + chunk].to(wide)
            b = df[start : start + chunk].to(wide)
            total += float(torch.dot(a, b))
    return -total
