"""The stacked copies compute what Hugging Face's Llama and torch's AdamW compute, copy by copy."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.science.stacked_llama import StackedAdamW, StackedLlama, check_supported

pytestmark = pytest.mark.unit


def _config(tied: bool = False) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        attn_implementation="sdpa",
    )


def _model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # break the init's symmetry (norm weights are all ones otherwise)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("tied", [False, True])
def test_losses_and_gradients_match_hugging_face(tied: bool) -> None:
    torch.set_num_threads(1)
    config = _config(tied)
    model = _model(config, 0)
    stacked = StackedLlama(config, model.state_dict(), copies=3, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(config.vocab_size, (3, 2, 16), generator=gen)
    losses = stacked.losses(ids)
    losses.sum().backward()
    for c in range(3):
        model.zero_grad()
        want = model(input_ids=ids[c], labels=ids[c]).loss
        want.backward()
        assert float(losses[c].detach()) == pytest.approx(float(want.detach()), rel=1e-5)
        grads = dict(model.named_parameters())
        for name in stacked.names:
            got = stacked.params[name].grad
            assert got is not None
            ref = grads[name].grad
            assert ref is not None
            torch.testing.assert_close(got[c], ref, rtol=1e-4, atol=1e-6)


def test_adamw_matches_torch_per_copy_learning_rate() -> None:
    torch.set_num_threads(1)
    config = _config()
    lrs = [1e-3, 3e-2]
    models = [_model(config, 0) for _ in lrs]
    stacked = StackedLlama(config, models[0].state_dict(), copies=2, device=torch.device("cpu"))
    opt = StackedAdamW(stacked.parameters(), lrs, betas=(0.9, 0.95), eps=1e-8)
    refs = [
        torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        for m, lr in zip(models, lrs, strict=True)
    ]
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        ids = torch.randint(config.vocab_size, (2, 2, 12), generator=gen)
        opt.zero_grad()
        stacked.losses(ids).sum().backward()
        opt.step()
        for c, (model, ref) in enumerate(zip(models, refs, strict=True)):
            ref.zero_grad()
            model(input_ids=ids[c], labels=ids[c]).loss.backward()
            ref.step()
    for c, model in enumerate(models):
        state = stacked.copy_state(c)
        for name, p in model.named_parameters():
            torch.testing.assert_close(state[name], p.detach(), rtol=1e-4, atol=1e-6)
    # The two rates moved the copies differently: the copy axis is not shared by accident.
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(stacked.copy_state(0)[q], stacked.copy_state(1)[q])


def test_eval_losses_equal_hugging_face_per_copy() -> None:
    torch.set_num_threads(1)
    config = _config()
    first, second = _model(config, 0), _model(config, 5)
    stacked = StackedLlama(config, first.state_dict(), copies=2, device=torch.device("cpu"))
    stacked.load(1, second.state_dict())
    rows = torch.randint(config.vocab_size, (5, 10), generator=torch.Generator().manual_seed(3))
    got = stacked.eval_losses(rows, chunk=2)
    with torch.no_grad():
        want = [float(m(input_ids=rows, labels=rows).loss) for m in (first, second)]
    assert got == pytest.approx(want, rel=1e-5)


def test_unsupported_options_are_refused() -> None:
    config = _config()
    config.num_key_value_heads = 2
    with pytest.raises(ValueError, match="grouped-query"):
        check_supported(config)
