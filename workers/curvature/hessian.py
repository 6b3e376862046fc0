"""Validation measures from Hessian-vector products (method.md §2, §5); for small models.

- Directional sharpness `lambda_dir = d^T H d / d^T g`: the analytic twin of `lambda_c`. For a
  quadratic loss `L(theta - eta d) = L0 - eta d^T g + eta^2/2 d^T H d`, whose root is
  `eta_c = 2 d^T g / d^T H d`, so `2 / eta_c == lambda_dir` exactly.
- The largest Hessian eigenvalue `lambda_max` by Lanczos, optionally of the preconditioned
  Hessian `P^{-1/2} H P^{-1/2}` with Adam's `P = diag(sqrt(v_hat) + eps)`.

Hessian-vector products use double backward (`torch.autograd.grad` with `create_graph=True`):
one gradient graph per batch, reused for every product. Each product costs a few forward+backward
equivalents (method.md §6: 3.5x), so a `lambda_max` of 20+ products is ~30x a `lambda_c`.
Models must support double backward (eager attention rather than fused SDPA kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
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
    """Result of `lambda_max`.

    Attributes:
        value: The largest Ritz value: the estimate of the largest (algebraic) eigenvalue.
        iterations: Hessian-vector products spent.
        converged: Whether the Ritz residual fell below the tolerance.
        vector: The Ritz vector (unit norm), one tensor per parameter.
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
    """Largest eigenvalue of the Hessian (or of `P^{-1/2} H P^{-1/2}`) by Lanczos.

    Lanczos with full reorthogonalisation builds a Krylov basis `V` (k x n, one Hessian-vector
    product per step) and the tridiagonal `T = V^T A V` (k x k); the largest eigenvalue of `T` (a
    Ritz value) converges to the largest *algebraic* eigenvalue of `A`. Unlike power iteration,
    which finds the eigenvalue of largest magnitude and crawls when a large negative eigenvalue
    dominates (common for Adam-preconditioned Hessians of trained transformers), it needs no shift
    and converges in a few dozen products. It keeps the k basis vectors: meant for the small models
    it validates against, not for billion-parameter ones.

    Args:
        model: The network (eval mode during the computation).
        loss_fn: `loss_fn(model, batch) -> scalar Tensor`.
        batch: The batch.
        params: Parameters; default: those with `requires_grad`.
        preconditioner: Diagonal `P` (e.g. `adam_preconditioner(...)`), one tensor per parameter.
        iterations: Maximum Hessian-vector products (Krylov dimension).
        rtol: Stop when the Ritz residual `|beta_k * y_k|` is below `rtol * |theta|`.
        seed: Seed of the random start vector.
    """
    ps = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if preconditioner is not None:
        check_direction(ps, preconditioner)
    if iterations < 1:
        raise CurvatureError(f"iterations must be >= 1, got {iterations}")
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device) for p in ps]
    scale: list[Tensor | None] = (
        [None] * len(ps) if preconditioner is None else [s.float().rsqrt() for s in preconditioner]
    )

    def apply(hessian: HessianOperator, xs: list[Tensor]) -> list[Tensor]:
        # P^{-1/2} H P^{-1/2} x; plain H x without a preconditioner.
        ys = [x if s is None else x * s for x, s in zip(xs, scale, strict=True)]
        hy = hessian(ys)
        return [h.float() if s is None else h.float() * s for h, s in zip(hy, scale, strict=True)]

    norm = float(_dot(start, start)) ** 0.5
    basis: list[list[Tensor]] = [[x / norm for x in start]]  # V: k unit vectors
    alphas: list[float] = []  # diagonal of T
    betas: list[float] = []  # off-diagonal of T
    value, converged, ritz = 0.0, False, np.ones(1)
    with HessianOperator(model, loss_fn, batch, ps) as hessian:
        for _ in range(iterations):
            w = apply(hessian, basis[-1])
            alphas.append(float(_dot(w, basis[-1])))
            # Full reorthogonalisation against every basis vector (twice is enough in floating
            # point): without it the Krylov basis loses orthogonality and Ritz values repeat.
            for _ in range(2):
                for v in basis:
                    c = float(_dot(w, v))
                    w = [wi - c * vi for wi, vi in zip(w, v, strict=True)]
            beta = float(_dot(w, w)) ** 0.5
            t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
            evals, evecs = np.linalg.eigh(t)
            value, ritz = float(evals[-1]), evecs[:, -1]
            # |beta_k * (last component of the top Ritz vector)| bounds ||A x - theta x||.
            if abs(beta * ritz[-1]) <= rtol * max(abs(value), 1e-30):
                converged = True
                break
            if beta <= 1e-12 * max(abs(value), 1.0):  # invariant subspace: T is exact
                converged = True
                break
            betas.append(beta)
            basis.append([wi / beta for wi in w])
    vector = [
        sum((float(c) * v[i] for c, v in zip(ritz, basis, strict=False)), torch.zeros_like(p))
        for i, p in enumerate(start)
    ]
    return Eigenvalue(value=value, iterations=len(alphas), converged=converged, vector=vector)
