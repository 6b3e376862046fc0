"""The compensated bf16 path (perturb.py): closed-form precision of its products, and a model
that comes back bit for bit. Its accuracy on a trained model is in test_precision.py."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from workers.curvature import Perturbation, measure
from workers.curvature.compensated import addmm_f32_, mm_f32, split_bf16

pytestmark = pytest.mark.unit


def test_split_keeps_sixteen_bits() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=gen) * torch.logspace(-3, 3, 4096)
    hi, lo = split_bf16(x)
    assert hi.dtype == lo.dtype == torch.bfloat16
    err = (hi.double() + lo.double() - x.double()).abs()
    assert bool((err <= 2.0**-16 * x.double().abs()).all())
    # bf16 alone keeps 8 bits: its error reaches 2**-9 of some values.
    assert float(((hi.double() - x.double()).abs() / x.double().abs()).max()) > 2.0**-10


def test_products_accumulate_in_float32() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(16, 64, generator=gen).bfloat16()
    w = torch.randn(8, 64, generator=gen).bfloat16()
    exact = a.double() @ w.double().T
    y = mm_f32(a, w)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), exact, rtol=1e-6, atol=1e-5)
    addmm_f32_(y, a, w, alpha=-0.5)
    torch.testing.assert_close(y.double(), 0.5 * exact, rtol=1e-6, atol=1e-5)


def _linear_error(precision: str, eta: float) -> float:
    """Max error of a perturbed bf16 linear layer against float64, relative to |x| |W - eta D|."""
    torch.manual_seed(2)
    layer = nn.Linear(256, 64).bfloat16().requires_grad_(False)
    d_w, d_b = torch.randn(64, 256), torch.randn(64)
    x = torch.randn(32, 256)
    w64 = layer.weight.double() - eta * d_w.bfloat16().double()  # D enters rounded to bf16
    b64 = layer.bias.double() - eta * d_b.double()
    exact = x.double() @ w64.T + b64
    scale = x.double().abs() @ w64.abs().T + b64.abs()
    with (
        torch.no_grad(),
        Perturbation(layer, [layer.weight, layer.bias], [d_w, d_b], precision) as p,
    ):
        p.set_step(eta)
        y = layer(x)
    return float(((y.double() - exact).abs() / scale).max())


@pytest.mark.parametrize("eta", [1e-5, 1e-3])
def test_compensated_linear_matches_float64(eta: float) -> None:
    # The step is 1e-5 of the weights: below bf16's resolution, yet kept to 2**-14 of |x||W|.
    compensated = _linear_error("compensated", eta)
    assert compensated <= 2.0**-14
    # The split path rounds its input and output to bf16: at least 16x further off.
    assert _linear_error("split", eta) >= 16 * compensated


def _tiny_llama(tied: bool) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=48,
        max_position_embeddings=16,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(cfg).bfloat16().eval()


def lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss  # type: ignore[no-any-return]


@pytest.mark.parametrize("tied", [True, False])
def test_llama_restored_bit_exactly_with_frozen_layers(tied: bool) -> None:
    model = _tiny_llama(tied)
    ids = torch.randint(0, 48, (4, 16), generator=torch.Generator().manual_seed(3))
    # Perturb only the MLPs and the embedding: attention projections and norms stay frozen bf16,
    # which the float32 residual stream must pass through without a dtype error.
    params = [p for n, p in model.named_parameters() if "mlp" in n or "embed" in n]
    direction = [torch.randn_like(p, dtype=torch.float32) for p in params]
    before = [p.detach().clone() for p in model.parameters()]
    r = measure(
        model, lm_loss, direction, ids, lr_guess=1e-3, params=params, precision="compensated"
    )
    assert r.forwards >= 2 and r.status in ("ok", "increases_immediately", "no_increase")
    assert all(
        torch.equal(a, p) and p.dtype == torch.bfloat16
        for a, p in zip(before, model.parameters(), strict=True)
    )
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_compensated_zero_step_is_the_fp32_reference_within_rounding() -> None:
    model = _tiny_llama(tied=True)
    ids = torch.randint(0, 48, (4, 16), generator=torch.Generator().manual_seed(4))
    params = list(model.parameters())
    zeros = [torch.zeros_like(p) for p in params]
    losses = {}
    for precision in ("fp32", "compensated"):
        with torch.no_grad(), Perturbation(model, params, zeros, precision):  # type: ignore[arg-type]
            losses[precision] = float(lm_loss(model, ids))
    assert losses["compensated"] == pytest.approx(losses["fp32"], rel=1e-5)
