from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast

from workers.data import (
    DataError,
    LoadPolicy,
    ModelSource,
    check_model_fits,
    load_model,
    save_optimizer_state,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("arch", ["llama", "olmo2", "gpt2", "qwen2"])
def test_loads_each_architecture(
    arch: str, make_model_dir: Callable[..., Path], policy: LoadPolicy, context: int
) -> None:
    directory = make_model_dir(arch)
    loaded = load_model(
        ModelSource(path=directory.name), policy, dtype=torch.bfloat16, seq_len=context
    )
    assert loaded.context_length == context
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.tokenizer.eos_token_id == 0
    assert loaded.optimizer_state is None
    ids = torch.tensor([[2, 3, 4, 5]])
    logits = loaded.model(ids).logits  # (1, 4, V)
    assert logits.shape == (1, 4, loaded.model.config.vocab_size)


def test_weights_are_the_saved_ones(
    make_model_dir: Callable[..., Path], policy: LoadPolicy
) -> None:
    directory = make_model_dir("llama")
    saved = load_file(str(directory / "model.safetensors"))
    loaded = load_model(ModelSource(path=str(directory)), policy)
    params = dict(loaded.model.named_parameters())
    for name, tensor in saved.items():
        torch.testing.assert_close(params[name].detach(), tensor)


def test_pickle_weights_are_refused(
    make_model_dir: Callable[..., Path], policy: LoadPolicy
) -> None:
    directory = make_model_dir("gpt2")
    weights = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(weights, directory / "pytorch_model.bin")
    with pytest.raises(DataError, match=r"unsafe weights format.*convert to safetensors") as info:
        load_model(ModelSource(path="gpt2"), policy)
    assert info.value.field == "model.path"


def test_remote_code_needs_the_operator(
    make_model_dir: Callable[..., Path], policy: LoadPolicy
) -> None:
    directory = make_model_dir("llama")
    # An architecture transformers does not know, whose code would come from the repository.
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "sharpmix_custom"
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomModel",
    }
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="custom code") as info:
        load_model(ModelSource(path="llama"), policy)
    assert info.value.field == "model.path"


def test_seq_len_above_context(
    make_model_dir: Callable[..., Path], policy: LoadPolicy, context: int
) -> None:
    make_model_dir("qwen2")
    with pytest.raises(DataError, match=f"above the model's context length {context}") as info:
        load_model(ModelSource(path="qwen2"), policy, seq_len=context + 1)
    assert info.value.field == "seq_len"


def test_tokenizer_larger_than_embedding(
    make_model_dir: Callable[..., Path], policy: LoadPolicy, tokenizer: PreTrainedTokenizerFast
) -> None:
    make_model_dir("olmo2", vocab_size=len(tokenizer) - 10)
    with pytest.raises(DataError, match="embedding has only") as info:
        load_model(ModelSource(path="olmo2"), policy, seq_len=16)
    assert info.value.field == "model.path"


def test_check_model_fits_accepts_a_padded_embedding(
    make_model_dir: Callable[..., Path],
    policy: LoadPolicy,
    tokenizer: PreTrainedTokenizerFast,
    context: int,
) -> None:
    make_model_dir("olmo2", vocab_size=len(tokenizer) + 8)
    loaded = load_model(ModelSource(path="olmo2"), policy)
    check_model_fits(loaded.model.config, loaded.tokenizer, seq_len=context)
    with pytest.raises(DataError, match="at least 2"):
        check_model_fits(loaded.model.config, loaded.tokenizer, seq_len=1)


def test_bad_references(
    make_model_dir: Callable[..., Path], policy: LoadPolicy, tmp_path: Path
) -> None:
    make_model_dir("gpt2")
    with pytest.raises(DataError, match="exactly one"):
        load_model(ModelSource(), policy)
    with pytest.raises(DataError, match="exactly one"):
        load_model(ModelSource(path="gpt2", hub_id="org/model"), policy)
    with pytest.raises(DataError, match="does not exist"):
        load_model(ModelSource(path="nope"), policy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no config\.json"):
        load_model(ModelSource(path="empty"), policy)


def test_offline_policy_fails_at_once_for_hub_ids(policy: LoadPolicy) -> None:
    offline = LoadPolicy(policy.allowed_roots, policy.cache_dir, offline=True)
    with pytest.raises(DataError, match="offline") as info:
        load_model(ModelSource(hub_id="allenai/OLMo-2-0425-1B", revision="main"), offline)
    assert info.value.field == "model.hub_id"


def test_unreachable_hub_id_becomes_a_data_error(policy: LoadPolicy) -> None:
    # HF_HUB_OFFLINE=1 (conftest) makes the real hub path fail the way a firewalled box does.
    with pytest.raises(DataError, match="cannot fetch") as info:
        load_model(ModelSource(hub_id="sharpmix-tests/no-such-model"), policy)
    assert info.value.field == "model.hub_id"


def _adam_state(directory: Path, policy: LoadPolicy) -> tuple[torch.nn.Module, Path]:
    model = load_model(ModelSource(path=str(directory)), policy).model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[2, 3, 4, 5]]), labels=torch.tensor([[2, 3, 4, 5]])).loss.backward()
    optimizer.step()
    path = directory.parent / "adam.safetensors"
    save_optimizer_state(model, optimizer, path)
    return model, path


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # gpt2: tied embedding appears once
def test_optimizer_state_round_trip(
    arch: str, make_model_dir: Callable[..., Path], policy: LoadPolicy
) -> None:
    directory = make_model_dir(arch)
    model, path = _adam_state(directory, policy)
    loaded = load_model(ModelSource(path=arch, optimizer_state=path.name), policy)
    assert loaded.optimizer_state is not None
    assert loaded.optimizer_state["step"].item() == 1.0
    for name, param in model.named_parameters():
        state = loaded.optimizer_state[f"exp_avg.{name}"]
        assert state.shape == param.shape and state.dtype == torch.float32
    # The same layout read through torch.load(weights_only=True).
    torch.save(load_file(str(path)), directory.parent / "adam.pt")
    again = load_model(ModelSource(path=arch, optimizer_state="adam.pt"), policy)
    assert again.optimizer_state is not None
    torch.testing.assert_close(again.optimizer_state, loaded.optimizer_state)


def test_optimizer_state_errors(make_model_dir: Callable[..., Path], policy: LoadPolicy) -> None:
    directory = make_model_dir("olmo2")
    _, path = _adam_state(directory, policy)
    state = load_file(str(path))
    name = next(key for key in state if key.startswith("exp_avg."))
    state[name] = torch.zeros(3)
    save_file(state, str(path.parent / "wrong_shape.safetensors"))
    with pytest.raises(DataError, match="different model") as info:
        load_model(ModelSource(path="olmo2", optimizer_state="wrong_shape.safetensors"), policy)
    assert info.value.field == "model.optimizer_state"
    del state[name]
    save_file(state, str(path.parent / "missing.safetensors"))
    with pytest.raises(DataError, match="missing exp_avg"):
        load_model(ModelSource(path="olmo2", optimizer_state="missing.safetensors"), policy)
    (path.parent / "state.npz").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported optimizer state"):
        load_model(ModelSource(path="olmo2", optimizer_state="state.npz"), policy)
