"""Validation measures: closed forms on quadratics, and lambda_c vs lambda_dir vs lambda_max on a
small trained network."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.workers.curvature.curvature_helpers import (
    Quadratic,
    make_mlp,
    mse,
    quadratic_loss,
    regression_data,
)
from workers.curvature import (
    AdamState,
    adam_preconditioner,
    directional_sharpness,
    lambda_max,
    measure,
)

pytestmark = pytest.mark.unit


def test_directional_sharpness_closed_form(quadratic_factory: Callable[..., Quadratic]) -> None:
    model = quadratic_factory(12, 50.0, seed=1)
    g = model.grad()
    d = torch.sign(g)  # any descent direction
    ds = directional_sharpness(model, quadratic_loss, [d], None)
    torch.testing.assert_close(ds.dHd, float(d @ model.hessian @ d))
    torch.testing.assert_close(ds.dg, float(d @ g))
    torch.testing.assert_close(ds.value, ds.dHd / ds.dg)


def test_lambda_max_closed_form(quadratic_factory: Callable[..., Quadratic]) -> None:
    model = quadratic_factory(20, 100.0, seed=2)
    top = lambda_max(model, quadratic_loss, None, iterations=300, rtol=1e-10)
    expected = float(torch.linalg.eigvalsh(model.hessian).max())
    assert top.value == pytest.approx(expected, rel=1e-3)


def test_preconditioned_lambda_max_and_adam_direction(
    quadratic_factory: Callable[..., Quadratic],
) -> None:
    model = quadratic_factory(16, 30.0, seed=3)
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(16, generator=gen, dtype=torch.float64) + 0.1
    state = AdamState(exp_avg=[torch.zeros(16)], exp_avg_sq=[v], steps=[5])
    betas, eps = (0.0, 0.99), 1e-8
    (p_diag,) = adam_preconditioner(state, betas=betas, eps=eps)
    scale = p_diag.double().rsqrt()
    expected = float(torch.linalg.eigvalsh(scale[:, None] * model.hessian * scale[None, :]).max())
    top = lambda_max(
        model, quadratic_loss, None, preconditioner=[p_diag], iterations=400, rtol=1e-10
    )
    assert top.value == pytest.approx(expected, rel=1e-3)
    # An Adam-like direction d = P^{-1} g has lambda_dir <= lambda_max(P^{-1/2} H P^{-1/2}).
    d = model.grad() / p_diag.double()
    assert directional_sharpness(model, quadratic_loss, [d], None).value <= top.value * (1 + 1e-6)


def test_trained_network_lambda_c_tracks_lambda_dir_below_lambda_max() -> None:
    torch.manual_seed(0)
    # Trained by full-batch GD at lr 0.5 until it sits at the edge of stability (sharpness ~ 2/lr),
    # where the gradient has real curvature. (Far below it, along an almost flat gradient, the
    # loss is not quadratic over the long step eta_c and lambda_c and lambda_dir need not agree.)
    model = make_mlp(seed=5, width=16).double()
    batch = tuple(t.double() for t in regression_data(n=128, seed=5))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        mse(model, batch).backward()
        opt.step()
    opt.zero_grad()
    mse(model, batch).backward()
    d = [p.grad.clone() for p in model.parameters() if p.grad is not None]  # GD direction
    ds = directional_sharpness(model, mse, d, batch)
    top = lambda_max(model, mse, batch, iterations=200, rtol=1e-7)
    r = measure(model, mse, d, batch, lr_guess=0.01)
    assert r.status == "ok"
    assert ds.value > 0
    assert abs(r.sharpness - ds.value) / ds.value <= 0.2
    assert ds.value <= top.value * (1 + 1e-6)


def test_lambda_max_is_the_largest_not_the_largest_magnitude() -> None:
    # An indefinite Hessian whose dominant-magnitude eigenvalue is negative (a saddle).
    gen = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))
    eig = torch.tensor([-8.0, -3.0, -1.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0], dtype=torch.float64)
    zeros, ones = torch.zeros(10, dtype=torch.float64), torch.ones(10, dtype=torch.float64)
    model = Quadratic((q * eig) @ q.T, zeros, ones)
    top = lambda_max(model, quadratic_loss, None, iterations=2000, rtol=1e-12)
    assert top.value == pytest.approx(4.0, rel=1e-3)
    assert top.converged


def test_lambda_max_when_the_negative_end_dwarfs_the_positive_one() -> None:
    # |lambda_min| >> lambda_max: the shifted run's values are dominated by the shift, so its
    # convergence must be judged on the unshifted estimate (a relative test on the shifted value
    # stops after two products far from the answer).
    gen = torch.Generator().manual_seed(3)
    n = 40
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eig = torch.cat([torch.tensor([-1e5]), torch.linspace(-50.0, 3e2, n - 1)]).double()
    zeros, ones = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    model = Quadratic((q * eig) @ q.T, zeros, ones)
    top = lambda_max(model, quadratic_loss, None, iterations=4000, rtol=1e-9)
    assert top.value == pytest.approx(3e2, rel=1e-3)
