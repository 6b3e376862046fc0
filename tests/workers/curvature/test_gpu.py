"""GPU tier: a bf16 model on CUDA measured with the default precision path agrees with the same
model in fp32, and comes back bit for bit. Skipped where there is no CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, Olmo2Config

from workers.curvature import adamw_direction, measure

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def token_loss(model: nn.Module, batch: Tensor) -> Tensor:
    loss: Tensor = model(input_ids=batch, labels=batch).loss
    return loss.float()


def test_bf16_default_path_matches_fp32_on_cuda() -> None:
    torch.manual_seed(0)
    config = Olmo2Config(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config).cuda()
    # Structured data (a repeating ramp) so a few steps train the model somewhere non-trivial.
    data = (torch.arange(64 * 129, device="cuda") % 97).view(64, 129)[:, :128]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        token_loss(model, data[:32]).backward()
        optimizer.step()
        optimizer.zero_grad()
    token_loss(model, data[:32]).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    direction = adamw_direction(params, [p.grad for p in params], weight_decay=0.0)  # type: ignore[misc]
    optimizer.zero_grad()

    eval_batch = data[32:]
    reference = measure(model, token_loss, direction, eval_batch, lr_guess=1e-4)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    before = [p.detach().clone() for p in bf16.parameters()]
    fast = measure(bf16, token_loss, direction, eval_batch, lr_guess=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, bf16.parameters(), strict=True))
    assert reference.status == fast.status == "ok"
    assert abs(fast.eta / reference.eta - 1) <= 2 / 16


def test_compensated_path_on_cuda_meets_the_fp32_reference() -> None:
    from workers.curvature import loss_change
    from workers.curvature.compensated import _ADDMM_INPLACE, _MM_OUT_DTYPE, addmm_f32_, mm_f32

    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(256, 512, device="cuda", generator=gen).bfloat16()
    w = torch.randn(128, 512, device="cuda", generator=gen).bfloat16()
    exact = a.double() @ w.double().T
    y = mm_f32(a, w)
    addmm_f32_(y, a, w, alpha=-0.25)
    torch.testing.assert_close(y.double(), 0.75 * exact, rtol=1e-5, atol=1e-4)
    assert _MM_OUT_DTYPE.get("cuda", True), "no bf16 matmul with a float32 output on this build"
    assert "cuda" in _ADDMM_INPLACE

    torch.manual_seed(0)
    config = Olmo2Config(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config).cuda()
    data = (torch.arange(64 * 129, device="cuda") % 97).view(64, 129)[:, :128]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        token_loss(model, data[:32]).backward()
        optimizer.step()
        optimizer.zero_grad()
    token_loss(model, data[:32]).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    direction = adamw_direction(params, [p.grad for p in params], weight_decay=0.0)  # type: ignore[misc]
    optimizer.zero_grad()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    before = [p.detach().clone() for p in bf16.parameters()]
    batch = data[32:]
    reference = measure(bf16, token_loss, direction, batch, lr_guess=1e-4, precision="fp32")
    fast = measure(bf16, token_loss, direction, batch, lr_guess=1e-4, precision="compensated")
    assert all(torch.equal(x, p) for x, p in zip(before, bf16.parameters(), strict=True))
    assert reference.status == fast.status == "ok"
    assert abs(fast.eta / reference.eta - 1) <= 1 / 64
    ref = loss_change(bf16, token_loss, direction, batch, 1e-5, precision="fp32").delta
    got = loss_change(bf16, token_loss, direction, batch, 1e-5, precision="compensated").delta
    assert abs(got - ref) <= 0.1 * abs(ref)
