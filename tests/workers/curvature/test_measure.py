"""measure() on models: quadratic closed forms, restore, eval mode, counting."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from tests.workers.curvature.curvature_helpers import (
    Quadratic,
    make_mlp,
    mse,
    quadratic_loss,
    regression_data,
)
from workers.curvature import (
    CurvatureError,
    SearchMethod,
    adamw_direction,
    line_slope,
    loss_change,
    measure,
    update_direction,
)

pytestmark = pytest.mark.unit

TOL = 1 / 16


@pytest.mark.parametrize("condition", [1.0, 1e2, 1e4])
@pytest.mark.parametrize("kind", ["gd", "fresh_adamw"])
@pytest.mark.parametrize("method", ["bisect", "quadratic"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quadratic_lambda_c_equals_directional(
    quadratic_factory: Callable[..., Quadratic],
    condition: float,
    kind: str,
    method: SearchMethod,
    dtype: torch.dtype,
) -> None:
    model = quadratic_factory(20, condition, seed=int(condition) % 7).to(dtype)
    g = model.grad()
    d = g if kind == "gd" else adamw_direction([model.theta], [g], weight_decay=0.0, dtype=dtype)[0]
    analytic = float(d @ model.hessian @ d / (d @ g))  # d^T H d / d^T g
    r = measure(model, quadratic_loss, [d], None, lr_guess=1e-3, tol=TOL, method=method)
    assert r.status == "ok"
    # For a quadratic, eta_c = 2 d^T g / d^T H d exactly, and it lies inside the bracket.
    assert r.lower <= 2 / analytic <= r.upper
    assert abs(r.sharpness - analytic) / analytic <= TOL


def test_parameters_restored_bit_exactly_and_mode_kept() -> None:
    model = make_mlp()
    batch = regression_data()
    mse(model, batch).backward()
    opt = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    d = update_direction(opt)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    r = measure(model, mse, d, batch, lr_guess=1e-2)
    assert r.status == "ok"
    assert model.training
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    model.eval()
    measure(model, mse, d, batch, lr_guess=1e-2)
    assert not model.training


def test_restored_when_loss_fn_raises() -> None:
    model = make_mlp()
    batch = regression_data()
    d = [torch.randn_like(p) for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def flaky(m: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        calls.append(1)
        if len(calls) == 3:  # after two forwards, with the model perturbed
            raise RuntimeError("boom")
        return mse(m, b)

    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        measure(model, flaky, d, batch, lr_guess=1e-2)
    assert model.training
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_eval_mode_and_same_batch_in_every_forward() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    batch = regression_data(dout=1)
    d = [torch.randn_like(p) for p in model.parameters()]
    seen: list[tuple[bool, bool, int]] = []

    def spy(m: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        seen.append((m.training, torch.is_grad_enabled(), id(b)))
        return mse(m, b)

    model.train()
    r = measure(model, spy, d, batch, lr_guess=1e-3)
    assert len(seen) == r.forwards  # the L(theta) forward is counted
    assert {s[:2] for s in seen} == {(False, False)}
    assert {s[2] for s in seen} == {id(batch)}


def test_loss0_given_skips_a_forward() -> None:
    model = make_mlp()
    batch = regression_data()
    mse(model, batch).backward()
    d = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    first = measure(model, mse, d, batch, lr_guess=0.1)
    again = measure(model, mse, d, batch, lr_guess=0.1, loss0=first.loss0)
    assert again.forwards == first.forwards - 1
    assert again.eta == first.eta


def test_loss_change_matches_manual_step() -> None:
    model = make_mlp()
    batch = regression_data()
    mse(model, batch).backward()
    d = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    lr = 0.05
    change = loss_change(model, mse, d, batch, lr)
    stepped = make_mlp()
    with torch.no_grad():
        for p, q, di in zip(model.parameters(), stepped.parameters(), d, strict=True):
            q.copy_(p - lr * di)
    torch.testing.assert_close(change.loss, float(mse(stepped, batch).detach()))
    assert change.forwards == 2 and change.delta == change.loss - change.loss0
    assert loss_change(model, mse, d, batch, lr, loss0=change.loss0).forwards == 1


def test_mismatched_direction_is_a_clear_error() -> None:
    model = make_mlp()
    d = [torch.zeros(3)]
    with pytest.raises(CurvatureError, match="params="):
        measure(model, mse, d, regression_data(), lr_guess=1e-3)
    d = [torch.zeros(p.shape[::-1]) for p in model.parameters()]
    with pytest.raises(CurvatureError, match="shape"):
        measure(model, mse, d, regression_data(), lr_guess=1e-3)
    with pytest.raises(CurvatureError, match="lr_guess"):
        measure(model, mse, list(model.parameters()), regression_data(), lr_guess=-1.0)
    with pytest.raises(CurvatureError, match="tol"):
        measure(model, mse, list(model.parameters()), regression_data(), lr_guess=1.0, tol=2.0)


def test_line_slope_is_the_directional_derivative(
    quadratic_factory: Callable[..., Quadratic],
) -> None:
    model = quadratic_factory(12, 1e2, seed=3)
    g = model.grad()
    d = adamw_direction([model.theta], [g], weight_decay=0.0, dtype=torch.float64)[0]
    slope = line_slope([g], [d])
    assert slope == pytest.approx(-float(g @ d), rel=1e-12)
    # d/deta of L(theta - eta d) at 0 by central differences on the quadratic (exact for it).
    with torch.no_grad():
        theta = model.theta.detach().clone()
        eps = 1e-4
        model.theta.copy_(theta - eps * d)
        up = float(model())
        model.theta.copy_(theta + eps * d)
        down = float(model())
        model.theta.copy_(theta)
    assert slope == pytest.approx((up - down) / (2 * eps), rel=1e-8)
    with pytest.raises(CurvatureError, match="gradient"):
        line_slope([g], [d, d])
    with pytest.raises(CurvatureError, match="shape"):
        line_slope([g], [d[:3]])


@pytest.mark.parametrize("method", ["bisect", "quadratic"])
def test_slope_keeps_the_answer_and_saves_probes(
    quadratic_factory: Callable[..., Quadratic], method: SearchMethod
) -> None:
    model = quadratic_factory(20, 1e3, seed=5)
    g = model.grad()
    d = adamw_direction([model.theta], [g], weight_decay=0.0, dtype=torch.float64)[0]
    true = 2 * float(d @ g) / float(d @ model.hessian @ d)  # eta_c of a quadratic
    plain = measure(model, quadratic_loss, [d], None, lr_guess=true * 1.04, method=method)
    known = measure(
        model,
        quadratic_loss,
        [d],
        None,
        lr_guess=true * 1.04,
        method=method,
        slope=line_slope([g], [d]),
    )
    for r in (plain, known):
        assert r.status == "ok" and r.lower <= true <= r.upper
    assert known.forwards <= plain.forwards
    if method == "quadratic":
        assert known.forwards == 3  # L(theta) and two probes


def test_a_measured_direction_is_freed_without_the_garbage_collector() -> None:
    # At 8 B a direction is 16 GB: it must go when the caller drops it, not when the cyclic
    # garbage collector happens to run (a self-referencing closure in the search kept it).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    direction = [torch.randn_like(p) for p in model.parameters()]
    refs = [weakref.ref(d) for d in direction]
    gc.disable()
    try:
        measure(model, loss_fn, direction, (x, y), lr_guess=1e-2)
        del direction
        assert all(r() is None for r in refs)
    finally:
        gc.enable()
