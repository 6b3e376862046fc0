"""theta - eta * update_direction(opt) is what opt.step() does with lr eta."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tests.workers.curvature.curvature_helpers import make_mlp, mse, regression_data
from workers.curvature import (
    CurvatureError,
    adamw_direction,
    direction_params,
    sgd_direction,
    update_direction,
)

pytestmark = pytest.mark.unit

ETA = 0.037

OptFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]

CASES: dict[str, OptFactory] = {
    "sgd": lambda g: torch.optim.SGD(g, lr=0.1),
    "sgd_wd": lambda g: torch.optim.SGD(g, lr=0.1, weight_decay=0.03),
    "sgd_momentum": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, dampening=0.2),
    "sgd_nesterov": lambda g: torch.optim.SGD(
        g, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01
    ),
    "sgd_maximize": lambda g: torch.optim.SGD(g, lr=0.01, momentum=0.5, maximize=True),
    "adam": lambda g: torch.optim.Adam(g, lr=1e-2),
    "adam_wd": lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=0.05, betas=(0.8, 0.99)),
    "adam_amsgrad": lambda g: torch.optim.Adam(g, lr=1e-2, amsgrad=True),
    "adamw": lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.1, eps=1e-6),
    "adamw_amsgrad_max": lambda g: torch.optim.AdamW(
        g, lr=1e-3, weight_decay=0.1, amsgrad=True, maximize=True
    ),
}


def _setup(name: str, steps: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = make_mlp(seed=1)
    model.register_parameter("unused", nn.Parameter(torch.ones(3)))  # grad stays None: skipped
    first, second = model[0], model[2]
    groups = [
        {"params": list(first.parameters())},
        # A second group with its own hyperparameters, to check group handling.
        {"params": [*second.parameters(), model.unused], "weight_decay": 0.0},
    ]
    opt = CASES[name](groups)
    for step in range(steps):
        opt.zero_grad()
        mse(model, regression_data(seed=step)).backward()
        opt.step()
    opt.zero_grad()
    mse(model, regression_data(seed=99)).backward()
    return model, opt


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> list[Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for state in opt.state.values():
        out += [v.clone() for v in state.values() if isinstance(v, Tensor)]
    return out


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("steps", [0, 3])
def test_direction_matches_step(name: str, steps: int) -> None:
    model, opt = _setup(name, steps)
    before = _snapshot(model, opt)
    d = update_direction(opt)
    params = direction_params(opt)
    assert len(d) == len(params) == 4  # the unused parameter is skipped
    # update_direction changed neither gradients nor state.
    after = _snapshot(model, opt)
    assert len(before) == len(after)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))

    model2, opt2 = copy.deepcopy((model, opt))
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        p2.grad = None if p.grad is None else p.grad.clone()  # deepcopy drops Parameter grads
    for group in opt2.param_groups:
        group["lr"] = ETA
    opt2.step()
    params2 = direction_params(opt2)
    for p, p2, di in zip(params, params2, d, strict=True):
        torch.testing.assert_close(p2.detach(), p.detach() - ETA * di, rtol=1e-6, atol=1e-7)


def test_fresh_adamw_is_near_sign() -> None:
    theta = [torch.tensor([1.0, -2.0, 3.0])]
    g = [torch.tensor([0.5, -1e-3, 0.0])]
    d = adamw_direction(theta, g, weight_decay=0.1, eps=1e-8)
    expected = 0.1 * theta[0] + g[0] / (g[0].abs() + 1e-8)
    torch.testing.assert_close(d[0], expected)


def test_pure_sgd_with_buffer() -> None:
    theta, g, buf = torch.ones(3), torch.full((3,), 2.0), torch.full((3,), 4.0)
    (d,) = sgd_direction([theta], [g], momentum_buffers=[buf], momentum=0.5, dampening=0.25)
    torch.testing.assert_close(d, 0.5 * buf + 0.75 * g)


def test_explicit_grads_replace_p_grad() -> None:
    _model, opt = _setup("adamw", 2)
    grads = [
        None if p.grad is None else 2 * p.grad
        for group in opt.param_groups
        for p in group["params"]
    ]
    d_scaled = update_direction(opt, grads=grads)
    d_plain = update_direction(opt)
    assert not all(torch.equal(a, b) for a, b in zip(d_scaled, d_plain, strict=True))
    with pytest.raises(CurvatureError, match="gradients were given"):
        update_direction(opt, grads=grads[:-1])


def test_unsupported_optimizer_is_named() -> None:
    model = make_mlp()
    mse(model, regression_data()).backward()
    with pytest.raises(CurvatureError, match="RMSprop"):
        update_direction(torch.optim.RMSprop(model.parameters()))


def test_mismatched_grads_shape() -> None:
    with pytest.raises(CurvatureError, match="shape"):
        sgd_direction([torch.zeros(3)], [torch.zeros(4)])
