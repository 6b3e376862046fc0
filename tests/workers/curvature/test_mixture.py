"""Mixed gradients equal the concatenated batch's, with no backward per ratio."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import Tensor, nn

from tests.workers.curvature.curvature_helpers import make_mlp, mse, regression_data
from workers.curvature import (
    CurvatureError,
    adamw_direction,
    domain_gradients,
    mix_gradients,
    mixed_direction,
    optimizer_transform,
    stream_mixed_gradients,
    update_direction,
)

pytestmark = pytest.mark.unit

Batch = tuple[Tensor, Tensor]
SIZES = [24, 40, 16]  # rows per domain; each row is one "token" with the same number of targets


def _domains() -> list[Batch]:
    return [regression_data(n=n, seed=10 + k) for k, n in enumerate(SIZES)]


def _split(batch: Batch, cut: int) -> list[Batch]:
    x, y = batch
    return [(x[:cut], y[:cut]), (x[cut:], y[cut:])]  # unequal micro-batches


def _concatenated_grad(
    model: nn.Module, domains: list[Batch], weights: list[float]
) -> list[Tensor]:
    x = torch.cat([d[0] for d in domains])
    y = torch.cat([d[1] for d in domains])
    # Per-token weights w_k / n_k: the mean-token loss of each domain, mixed with weights w.
    per_row = torch.cat([torch.full((n,), w / n) for n, w in zip(SIZES, weights, strict=True)])
    loss = (((model(x) - y) ** 2).mean(dim=1) * per_row).sum()
    return list(torch.autograd.grad(loss, list(model.parameters())))


WEIGHTS = [
    [1.0, 0.0, 0.0],
    [0.2, 0.3, 0.5],
    [1 / 3, 1 / 3, 1 / 3],
    [0.0, 0.9, 0.1],
    [0.05, 0.05, 0.9],
]


def test_mixed_gradient_equals_concatenated_batch() -> None:
    model = make_mlp(seed=3)
    domains = _domains()
    backwards: list[int] = []
    first = next(model.parameters())
    first.register_hook(lambda g: backwards.append(1))  # fires once per backward pass
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel, strict=True):
        p.grad = s.clone()

    micro = [_split(d, 5 + 3 * k) for k, d in enumerate(domains)]
    grads = domain_gradients(
        model, mse, micro, tokens=lambda b: float(len(b[0])), dtype=torch.float64, device="cpu"
    )
    assert grads.backward_passes == len(backwards) == 2 * len(SIZES)
    assert all(g.dtype == torch.float64 for row in grads.grads for g in row)
    # The model's own gradients are back.
    assert all(torch.equal(p.grad, s) for p, s in zip(model.parameters(), sentinel, strict=True))

    for w in WEIGHTS:
        mixed = mix_gradients(grads, w)
        reference = _concatenated_grad(model, domains, w)
        for m, r in zip(mixed, reference, strict=True):
            torch.testing.assert_close(m, r.double(), rtol=1e-5, atol=1e-7)
    # Only the reference gradients above ran backward passes; mixing ran none.
    assert len(backwards) == 2 * len(SIZES) + len(WEIGHTS)


def test_transform_after_mixing() -> None:
    model = make_mlp(seed=4)
    domains = _domains()
    grads = domain_gradients(model, mse, [[d] for d in domains])
    w = [0.2, 0.3, 0.5]
    reference = [g.float() for g in _concatenated_grad(model, domains, w)]
    params = list(model.parameters())

    fresh = mixed_direction(grads, w, functools.partial(adamw_direction, weight_decay=0.1))
    expected = adamw_direction(params, reference, weight_decay=0.1)
    for a, b in zip(fresh, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for step in range(3):  # real state
        opt.zero_grad()
        mse(model, regression_data(seed=step)).backward()
        opt.step()
    stateful = mixed_direction(grads, w, optimizer_transform(opt))
    expected = update_direction(opt, grads=reference)
    for a, b in zip(stateful, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([0.5, 0.5], "3 domains"),
        ([0.5, 0.6, -0.1], ">= 0"),
        ([0.5, 0.5, math.nan], "finite"),
        ([0.3, 0.3, 0.3], "sum to 1"),
    ],
)
def test_bad_weights(weights: list[float], match: str) -> None:
    grads = domain_gradients(make_mlp(), mse, [[d] for d in _domains()])
    with pytest.raises(CurvatureError, match=match):
        mix_gradients(grads, weights)
    # The streaming path (gradients kept in CPU memory) checks the weights the same way.
    with pytest.raises(CurvatureError, match=match):
        stream_mixed_gradients(grads, weights, torch.device("cpu"))


def test_streamed_mix_equals_the_mix_in_place() -> None:
    grads = domain_gradients(make_mlp(seed=5), mse, [[d] for d in _domains()])
    for w in WEIGHTS:
        streamed = stream_mixed_gradients(grads, w, torch.device("cpu"))
        assert all(g.dtype == torch.float32 for g in streamed)
        for a, b in zip(streamed, mix_gradients(grads, w), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_weights_within_1e6_of_simplex_are_accepted() -> None:
    grads = domain_gradients(make_mlp(), mse, [[d] for d in _domains()])
    mix_gradients(grads, [0.5, 0.25, 0.25 + 5e-7])
