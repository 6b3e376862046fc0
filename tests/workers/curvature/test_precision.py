"""bf16 models on a trained tiny OLMo-2 (method.md §2 "Precision", §6): the default (compensated)
path meets the fp32 reference; the naive path loses the step; the split path sees it, biased."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from workers.curvature import Precision, adamw_direction, loss_change, measure

pytestmark = pytest.mark.unit

V, T = 64, 32
TOL = 1 / 16


def _markov(seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(3.0 * torch.randn(V, V, generator=gen), dim=-1)  # (V, V) transitions


def _sample(P: Tensor, n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(n, T, dtype=torch.long)  # (n, T) token ids
    x[:, 0] = torch.randint(0, V, (n,), generator=gen)
    for t in range(1, T):
        x[:, t] = torch.multinomial(P[x[:, t - 1]], 1, generator=gen).squeeze(1)
    return x


def lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss  # type: ignore[no-any-return]


def train_tiny_olmo() -> tuple[nn.Module, Tensor, Tensor]:
    """A tiny OLMo-2 trained 300 AdamW steps on a 'pre-training' Markov language."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    cfg = Olmo2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=V,
        max_position_embeddings=T,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = Olmo2ForCausalLM(cfg)
    pt, ft = _markov(1), _markov(2)
    data = _sample(pt, 300 * 16, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(300):
        opt.zero_grad()
        lm_loss(model, data[16 * step : 16 * (step + 1)]).backward()
        opt.step()
    return model, _sample(pt, 64, seed=4), _sample(ft, 64, seed=5)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the per-test one-thread fixture
    try:
        return train_tiny_olmo()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("relative", [False, True])
def test_bf16_paths_against_fp32_reference(
    trained: tuple[nn.Module, Tensor, Tensor], relative: bool
) -> None:
    model, pt, ft = trained
    # Fresh-AdamW direction of the pre-training batch itself, or of the fine-tuning batch
    # (relative critical sharpness, evaluated on the pre-training batch).
    model.zero_grad()
    lm_loss(model, ft if relative else pt).backward()
    params = list(model.parameters())
    d = adamw_direction(params, [p.grad for p in params], weight_decay=0.0)  # type: ignore[misc]
    model.zero_grad()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    before = [p.detach().clone() for p in bf16.parameters()]

    def run(precision: Precision) -> float:
        r = measure(bf16, lm_loss, d, pt, lr_guess=1e-3, precision=precision)
        assert all(
            torch.equal(a, p) and p.dtype == torch.bfloat16
            for a, p in zip(before, bf16.parameters(), strict=True)
        )
        return r.eta

    reference, auto, split, naive = run("fp32"), run("auto"), run("split"), run("exact")
    assert reference > 0
    assert auto == run("compensated")  # "auto" picks the compensated path for bf16 models
    # The fp32 forward of the bf16 weights sits within a few tol of the fp32 model itself (the
    # weights differ by their bf16 rounding).
    own = measure(model, lm_loss, d, pt, lr_guess=1e-3).eta
    assert abs(reference - own) / own <= 2 * TOL
    # Split sees the step but underestimates eta_c by the rounding dither (perturb.py docstring):
    # it is below the reference and within 20%, not within tol, so it is not the default.
    assert 0.8 * reference <= split <= reference * (1 + TOL)
    assert naive > 0  # at these large eta_c the naive path still moves the weights; see below


def test_naive_bf16_loses_a_fine_tuning_sized_step(
    trained: tuple[nn.Module, Tensor, Tensor],
) -> None:
    model, pt, ft = trained
    model.zero_grad()
    lm_loss(model, ft).backward()
    params = list(model.parameters())
    d = adamw_direction(params, [p.grad for p in params], weight_decay=0.0)  # type: ignore[misc]
    model.zero_grad()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    lr = 1e-5  # a fine-tuning rate times a sign-like direction: below bf16 weight resolution
    naive = loss_change(bf16, lm_loss, d, pt, lr, precision="exact")
    reference = loss_change(bf16, lm_loss, d, pt, lr, precision="fp32")
    split = loss_change(bf16, lm_loss, d, pt, lr, precision="split")
    # The fp32 reference sees the step lower this loss; the naive path, which rounds the stepped
    # weights back to bf16 (all but the smallest), gets a different loss change altogether.
    assert reference.delta < 0
    assert abs(naive.delta - reference.delta) > abs(reference.delta)
    # Known limitation (perturb.py): at this step size the split path's rounding dither dominates
    # the change too, which is why it is experimental and never chosen by "auto".
    assert abs(split.delta - reference.delta) > abs(reference.delta)


@pytest.mark.parametrize("relative", [False, True])
def test_compensated_path_meets_the_fp32_reference(
    trained: tuple[nn.Module, Tensor, Tensor], relative: bool
) -> None:
    # The fast path's contract: eta_c within tol/4 and the one-step loss change at fine-tuning
    # rates within 10% of the float32 reference on the same bf16 weights, on a trained model,
    # where the split path misses the small relative change.
    model, pt, ft = trained
    model.zero_grad()
    lm_loss(model, ft if relative else pt).backward()
    params = list(model.parameters())
    d = adamw_direction(params, [p.grad for p in params], weight_decay=0.0)  # type: ignore[misc]
    model.zero_grad()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    before = [p.detach().clone() for p in bf16.parameters()]
    reference = measure(bf16, lm_loss, d, pt, lr_guess=1e-3, precision="fp32")
    fast = measure(bf16, lm_loss, d, pt, lr_guess=1e-3, precision="compensated")
    assert all(torch.equal(a, p) for a, p in zip(before, bf16.parameters(), strict=True))
    assert reference.status == fast.status == "ok"
    assert abs(fast.eta - reference.eta) <= TOL / 4 * reference.eta
    for lr in (1e-5, 1e-4):
        ref = loss_change(bf16, lm_loss, d, pt, lr, precision="fp32").delta
        got = loss_change(bf16, lm_loss, d, pt, lr, precision="compensated").delta
        assert ref < 0
        assert abs(got - ref) <= 0.1 * abs(ref)
    if relative:  # the small change along the other task's direction: split's dither wins
        split = loss_change(bf16, lm_loss, d, pt, 1e-5, precision="split").delta
        ref = loss_change(bf16, lm_loss, d, pt, 1e-5, precision="fp32").delta
        assert abs(split - ref) > 0.1 * abs(ref)
