"""SharpnessMonitor in a plain PyTorch loop: the direction is the optimizer's real step, training
is unchanged by measuring, the stability edges, and the basin warnings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from workers.curvature import (
    BasinWarning,
    CurvatureError,
    SharpnessMonitor,
    measure,
    update_direction,
)
from workers.curvature.monitor import causal_lm_loss, direction

pytestmark = pytest.mark.unit


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with 64 tokens, random init (no download)."""
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def domain(low: int, n: int, seed: int) -> Tensor:
    """(n, 16) token ids from a cyclic pattern over [low, low + 32): a learnable 'language'."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 32, (n, 1), generator=gen)
    step = torch.randint(1, 4, (n, 1), generator=gen)
    return low + (start + step * torch.arange(16)) % 32


def train(
    model: nn.Module, optimizer: torch.optim.Optimizer, data: Tensor, steps: int, batch: int = 8
) -> list[float]:
    losses = []
    for i in range(steps):
        rows = data[(i * batch) % (len(data) - batch) :][:batch]
        loss = causal_lm_loss(model, rows)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def test_the_direction_is_the_step_the_optimizer_takes() -> None:
    model = tiny_llama()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0, "lr": 3e-4}],
        lr=1e-3,
        betas=(0.8, 0.95),
    )
    data = domain(0, 64, seed=1)
    train(model, optimizer, data, steps=3)  # moments and step counts are set now
    causal_lm_loss(model, data[:8]).backward()

    params, d, lr = direction(optimizer)
    before = [p.detach().clone() for p in params]
    optimizer.step()

    assert lr == 1e-3
    for p, theta, di in zip(params, before, d, strict=True):
        torch.testing.assert_close(p.detach(), theta - lr * di, rtol=1e-5, atol=1e-7)


def test_a_reading_is_lambda_c_along_that_direction() -> None:
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    pt, ft = domain(0, 64, seed=1), domain(32, 64, seed=2)
    monitor = SharpnessMonitor(model, {"pretraining": pt[:16], "finetuning": ft[:16]}, every=1)
    train(model, optimizer, pt[16:], steps=2)
    causal_lm_loss(model, pt[16:24]).backward()

    report = monitor.measure(optimizer, step=3)
    reference = measure(model, causal_lm_loss, update_direction(optimizer), pt[:16], lr_guess=1e-3)

    first = report.readings[0]
    assert [r.eval_set for r in report.readings] == ["pretraining", "finetuning"]
    assert first.status == reference.status == "ok"
    assert first.loss == reference.loss0
    # Same bracket rule, so both estimates lie within the search tolerance of each other.
    assert abs(first.eta_c - reference.eta) <= reference.eta / 8
    assert first.lambda_c == pytest.approx(2 / first.eta_c)
    assert report.forwards == sum(r.forwards for r in report.readings) >= 4
    assert report.two_over_lr == pytest.approx(2 / 1e-3)
    assert report.adam_edge == pytest.approx((2 + 2 * 0.9) / (0.1 * 1e-3) - 0.01)
    metrics = report.metrics()
    assert metrics["sharpness/pretraining/lambda_c"] == first.lambda_c
    assert metrics["sharpness/two_over_lr"] == report.two_over_lr
    assert all(math.isfinite(v) for v in metrics.values())


def test_training_is_bit_identical_with_the_hook() -> None:
    data = domain(32, 64, seed=3)
    runs = []
    for watched in (False, True):
        model = tiny_llama(seed=4)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        monitor = SharpnessMonitor(
            model, {"pretraining": domain(0, 16, seed=5)}, every=2, warn=False
        )
        handle = monitor.attach(optimizer) if watched else None
        losses = train(model, optimizer, data, steps=5)
        if handle is not None:
            handle.remove()
        runs.append((losses, [p.detach().clone() for p in model.parameters()], monitor))
    (plain_losses, plain, _), (watched_losses, watched, monitor) = runs
    assert watched_losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    assert [r.step for r in monitor.history] == [1, 2, 4]
    assert monitor.history[0].readings[0].drift == 0.0
    assert monitor.model.training  # measured in eval mode, handed back in train mode


def test_too_high_a_rate_warns_that_the_run_left_the_basin() -> None:
    model = tiny_llama()
    optimizer = torch.optim.SGD(model.parameters(), lr=200.0)
    monitor = SharpnessMonitor(model, {"pretraining": domain(0, 16, seed=1)}, every=1)
    monitor.attach(optimizer)
    with pytest.warns(BasinWarning, match="below the current rate"):
        train(model, optimizer, domain(0, 64, seed=2), steps=1)
    (report,) = monitor.history
    assert report.out_of_basin
    assert report.adam_edge is None
    assert report.readings[0].eta_c < 200.0


def test_a_held_out_loss_above_tolerance_warns() -> None:
    model = tiny_llama()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    pt = domain(0, 16, seed=1)
    monitor = SharpnessMonitor(model, {"pretraining": pt}, every=1, tolerance=0.01, warn=False)
    monitor.attach(optimizer)
    train(model, optimizer, domain(0, 64, seed=2), steps=1)
    with torch.no_grad():  # what a bad fine-tuning phase does to the pre-training loss
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    train(model, optimizer, domain(0, 64, seed=2), steps=1)
    first, second = monitor.history
    assert not first.out_of_basin
    assert second.readings[0].drift > 0.01
    assert second.out_of_basin
    assert any("rose by" in reason for reason in second.reasons)


def test_arguments_are_checked() -> None:
    model = tiny_llama()
    with pytest.raises(CurvatureError, match="at least one"):
        SharpnessMonitor(model, {})
    with pytest.raises(CurvatureError, match="every"):
        SharpnessMonitor(model, {"pt": domain(0, 4, seed=1)}, every=0)
    lbfgs = torch.optim.LBFGS(model.parameters())
    with pytest.raises(CurvatureError, match="SGD, Adam and AdamW"):
        SharpnessMonitor(model, {"pt": domain(0, 4, seed=1)}).measure(lbfgs, step=1)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(CurvatureError, match="after backward"):
        SharpnessMonitor(model, {"pt": domain(0, 4, seed=1)}).measure(adam, step=1)
    with pytest.raises(CurvatureError, match="input_ids"):
        causal_lm_loss(model, [1, 2, 3])
