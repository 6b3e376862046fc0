"""Validation measures from Hessian-vector products (method.md §2, §5); for small models.

- Directional sharpness `lambda_dir = d^T H d / d^T g`: the analytic twin of `lambda_c`. For a
  quadratic loss `L(theta - eta d) = L0 - eta d^T g + eta^2/2 d^T H d`, whose root is
  `eta_c = 2 d^T g / d^T H d`, so `2 / eta_c == lambda_dir` exactly.
- The largest Hessian eigenvalue `lambda_max` by power iteration, optionally of the preconditioned
  Hessian `P^{-1/2} H P^{-1/2}` with Adam's `P = diag(sqrt(v_hat) + eps)`.

Hessian-vector products use double backward (`torch.autograd.grad` with `create_graph=True`):
one gradient graph per batch, reused for every product. Each product costs a few forward+backward
equivalents (method.md §6: 3.5x), so a power iteration of 20+ products is ~30x a `lambda_c`.
Models must support double backward (eager attention rather than fused SDPA kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from workers.curvature.direction import AdamState
from workers.curvature.errors import CurvatureError
from workers.curvature.perturb import check_direction

BatchT = TypeVar("BatchT")

__all__ = [
    "DirectionalSharpness",
    "Eigenvalue",
    "HessianOperator",
    "adam_preconditioner",
    "directional_sharpness",
    "lambda_max",
]


def _dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    # Inner product over all parameters, accumulated in float64.
    total = torch.zeros((), dtype=torch.float64, device=xs[0].device)
    for x, y in zip(xs, ys, strict=True):
        total = total + (x.double() * y.double()).sum()
    return total


class HessianOperator:
    """`v -> H v` for the loss of one batch, built from one gradient graph.

    Args:
        model: The network (in eval mode for the duration; the previous mode is restored by
            `close()` or the context manager).
        loss_fn: `loss_fn(model, batch) -> scalar Tensor`.
        batch: The batch.
        params: Parameters w.r.t. which H is taken.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, BatchT], Tensor],
        batch: BatchT,
        params: Sequence[Tensor],
    ) -> None:
        self.model = model
        self.params = list(params)
        self.was_training = model.training
        model.eval()
        with torch.enable_grad():
            self.loss = loss_fn(model, batch)
            grads = torch.autograd.grad(self.loss, self.params, create_graph=True)
        self.grads: list[Tensor] = list(grads)
        self.products = 0

    def __enter__(self) -> HessianOperator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the graph and restore the model's train/eval mode."""
        self.grads = []
        self.model.train(self.was_training)

    def __call__(self, v: Sequence[Tensor]) -> list[Tensor]:
        """`H v`, one tensor per parameter."""
        with torch.enable_grad():
            gv = _dot(self.grads, [x.to(g.dtype) for x, g in zip(v, self.grads, strict=True)])
            hv = torch.autograd.grad(gv, self.params, retain_graph=True)
        self.products += 1
        return [h.detach() for h in hv]


@dataclass(frozen=True)
class DirectionalSharpness:
    """`lambda_dir = dHd / dg` with its parts.

    Attributes:
        value: `d^T H d / d^T g` (inf if `d^T g <= 0`: the direction does not descend).
        dHd: `d^T H d`.
        dg: `d^T g`.
        loss: `L(theta)` on the batch.
    """

    value: float
    dHd: float  # noqa: N815 (the formula's name)
    dg: float
    loss: float


def directional_sharpness(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, BatchT], Tensor],
    direction: Sequence[Tensor],
    batch: BatchT,
    *,
    params: Sequence[Tensor] | None = None,
) -> DirectionalSharpness:
    """`d^T H d / d^T g` on one batch from one Hessian-vector product (eval mode).

    Args:
        model: The network.
        loss_fn: `loss_fn(model, batch) -> scalar Tensor`.
        direction: `d`, one tensor per parameter.
        batch: The evaluation batch (`g` and `H` are of this batch's loss).
        params: Parameters of the direction; default: those with `requires_grad`.
    """
    ps = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    check_direction(ps, direction)
    with HessianOperator(model, loss_fn, batch, ps) as hessian:
        dg = float(_dot([g.detach() for g in hessian.grads], direction))
        dHd = float(_dot(hessian(direction), direction))
        loss = float(hessian.loss.detach())
    value = dHd / dg if dg > 0 else float("inf")
    return DirectionalSharpness(value=value, dHd=dHd, dg=dg, loss=loss)


@dataclass(frozen=True)
class Eigenvalue:
    """Result of power iteration.

    Attributes:
        value: The Rayleigh quotient at the last iterate (the dominant eigenvalue, in magnitude).
        iterations: Hessian-vector products spent.
        converged: Whether successive estimates agreed within the tolerance.
        vector: The last unit iterate, one tensor per parameter.
    """

    value: float
    iterations: int
    converged: bool
    vector: list[Tensor]


def adam_preconditioner(
    state: AdamState, *, betas: tuple[float, float], eps: float
) -> list[Tensor]:
    """Adam's diagonal `P = sqrt(v_hat) + eps` from its state (one tensor per parameter)."""
    b2 = float(betas[1])
    out = []
    for v, t in zip(state.exp_avg_sq, state.steps, strict=True):
        if t < 1:
            raise CurvatureError("adam_preconditioner needs state after at least one step")
        out.append((v.float() / (1 - b2**t)).sqrt() + eps)
    return out


def lambda_max(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, BatchT], Tensor],
    batch: BatchT,
    *,
    params: Sequence[Tensor] | None = None,
    preconditioner: Sequence[Tensor] | None = None,
    iterations: int = 50,
    rtol: float = 1e-4,
    seed: int = 0,
) -> Eigenvalue:
    """Largest eigenvalue of the Hessian (or of `P^{-1/2} H P^{-1/2}`) by power iteration.

    Power iteration converges to the eigenvalue of largest magnitude; when that one is negative
    (a saddle direction dominates) a second, shifted run finds the largest (algebraic) eigenvalue.

    Args:
        model: The network (eval mode during the computation).
        loss_fn: `loss_fn(model, batch) -> scalar Tensor`.
        batch: The batch.
        params: Parameters; default: those with `requires_grad`.
        preconditioner: Diagonal `P` (e.g. `adam_preconditioner(...)`), one tensor per parameter.
        iterations: Maximum Hessian-vector products (both runs together).
        rtol: Stop when successive Rayleigh quotients differ by less than this, relatively.
        seed: Seed of the random start vector.
    """
    ps = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if preconditioner is not None:
        check_direction(ps, preconditioner)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device) for p in ps]
    scale: list[Tensor | None] = (
        [None] * len(ps) if preconditioner is None else [s.float().rsqrt() for s in preconditioner]
    )

    def normalize(xs: list[Tensor]) -> list[Tensor]:
        norm = float(_dot(xs, xs)) ** 0.5
        return [x / norm for x in xs]

    def apply(hessian: HessianOperator, xs: list[Tensor]) -> list[Tensor]:
        # P^{-1/2} H P^{-1/2} x; plain H x without a preconditioner.
        ys = [x if s is None else x * s for x, s in zip(xs, scale, strict=True)]
        hy = hessian(ys)
        return [h.float() if s is None else h.float() * s for h, s in zip(hy, scale, strict=True)]

    def power(
        hessian: HessianOperator, xs: list[Tensor], shift: float, budget: int
    ) -> tuple[float, bool, int, list[Tensor]]:
        # Power iteration on (A + shift I); returns its dominant eigenvalue minus the shift.
        value, converged, n = 0.0, False, 0
        for n in range(1, budget + 1):
            ax = apply(hessian, xs)
            if shift:
                ax = [a + shift * x for a, x in zip(ax, xs, strict=True)]
            new = float(_dot(ax, xs))
            xs = normalize(ax)
            if n > 1 and abs(new - value) <= rtol * abs(new):
                value, converged = new, True
                break
            value = new
        return value - shift, converged, n, xs

    v = normalize(v)
    with HessianOperator(model, loss_fn, batch, ps) as hessian:
        value, converged, n, v = power(hessian, v, 0.0, iterations)
        if value < 0 and n < iterations:
            # Power iteration finds the eigenvalue of largest *magnitude*. When that is negative,
            # shifting by it moves the spectrum to [0, lambda_max - value], whose dominant
            # eigenvalue is lambda_max - value: a second run then finds the largest one.
            shift = -value
            restart = normalize(
                [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device) for p in ps]
            )
            value, converged, extra, v = power(hessian, restart, shift, iterations - n)
            n += extra
    return Eigenvalue(value=value, iterations=n, converged=converged, vector=v)
