"""The optimizer transform of a planned run from its hyperparameters and saved state equals what
torch's own optimizer would do from that state."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tests.workers.curvature.curvature_helpers import make_mlp, mse, regression_data
from workers.curvature import AdamHyper, SGDHyper, state_transform, update_direction

pytestmark = pytest.mark.unit


def _saved(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, Tensor]:
    """The optimizer's state keyed by ``<kind>.<parameter name>`` (and ``step``)."""
    saved: dict[str, Tensor] = {}
    for name, param in model.named_parameters():
        for kind, value in opt.state[param].items():
            if kind == "step":
                saved["step"] = torch.as_tensor(value)
            else:
                saved[f"{kind}.{name}"] = value.clone()
    return saved


@pytest.mark.parametrize(
    ("make", "hyper"),
    [
        (
            lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
            AdamHyper(weight_decay=0.1, amsgrad=True),
        ),
        (
            lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.05),
            AdamHyper(weight_decay=0.05, decoupled=False),
        ),
        (
            lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
            SGDHyper(momentum=0.9, nesterov=True),
        ),
    ],
)
def test_saved_state_gives_the_optimizers_direction(make, hyper) -> None:  # type: ignore[no-untyped-def]
    model = make_mlp(seed=6)
    params = list(model.parameters())
    opt = make(params)
    for step in range(3):
        opt.zero_grad()
        mse(model, regression_data(seed=step)).backward()
        opt.step()
    grads = [torch.randn_like(p) for p in params]
    got = state_transform(hyper, model, _saved(opt, model))(params, grads)
    expected = update_direction(opt, grads=grads)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
