"""Small fixed-seed models and losses for the curvature tests (imported via conftest's path)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Quadratic(nn.Module):
    """`L(theta) = 1/2 theta^T H theta - b^T theta`, with `theta` one parameter vector."""

    def __init__(self, hessian: Tensor, b: Tensor, theta: Tensor) -> None:
        super().__init__()
        self.register_buffer("hessian", hessian)
        self.register_buffer("b", b)
        self.theta = nn.Parameter(theta.clone())

    def forward(self) -> Tensor:
        t = self.theta
        return 0.5 * t @ self.hessian @ t - self.b @ t

    def grad(self) -> Tensor:
        return self.hessian @ self.theta.detach() - self.b


def spd(n: int, condition: float, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """A random symmetric positive definite matrix with eigenvalues from 1 to `condition`."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=dtype))
    eig = torch.logspace(0, float(torch.log10(torch.tensor(condition))), n, dtype=dtype)
    return (q * eig) @ q.T


def quadratic_loss(model: nn.Module, batch: object) -> Tensor:
    return model()  # type: ignore[no-any-return]


def make_mlp(seed: int = 0, width: int = 16, din: int = 4, dout: int = 2) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(din, width), nn.Tanh(), nn.Linear(width, dout))


def regression_data(
    n: int = 64, din: int = 4, dout: int = 2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, din, generator=gen)
    y = torch.sin(x @ torch.randn(din, dout, generator=gen))
    return x, y


def mse(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def memorization_task(
    n: int = 128, din: int = 8, dout: int = 2, width: int = 32, seed: int = 0
) -> tuple[nn.Sequential, tuple[Tensor, Tensor]]:
    """A two-hidden-layer tanh MLP and random targets to memorise: sharpens under full-batch GD."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(din, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, dout)
    )
    gen = torch.Generator().manual_seed(seed)
    return model, (torch.randn(n, din, generator=gen), torch.randn(n, dout, generator=gen))
