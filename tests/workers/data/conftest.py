"""Fixtures for the data package: tiny tokenizers, tiny random-init models, data files.

Nothing here touches the network: the hub is switched off for the whole directory, tokenizers
are trained on generated text, and models are random-init from configs written to tmp dirs.
"""

from __future__ import annotations

import os

# Set before huggingface_hub is imported (it reads these once, at import), so the real hub code
# paths fail fast, as on a firewalled box, instead of trying the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    Olmo2Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from sharpmix.assets.vocab import train_tokenizer
from workers.data import LoadPolicy

CONTEXT = 64
WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "a",
    "mat",
    "log",
    "red",
    "blue",
    "fox",
    "jumps",
    "over",
    "lazy",
    "river",
    "stone",
]


def sample_texts(n: int, *, seed: int = 0) -> list[str]:
    """Deterministic little documents of 5-14 words."""
    texts = []
    for i in range(n):
        length = 5 + (i * 7 + seed) % 10
        texts.append(" ".join(WORDS[(i * 3 + j * 5 + seed) % len(WORDS)] for j in range(length)))
    return texts


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(sample_texts(300), vocab_size=120)


def tiny_config(arch: str, vocab_size: int) -> PretrainedConfig:
    """A 2-layer, 32-wide config of the given architecture family."""
    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT, **special
        )
    shared = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": CONTEXT,
        **special,
    }
    if arch == "llama":
        return LlamaConfig(num_key_value_heads=2, **shared)
    if arch == "qwen2":
        return Qwen2Config(num_key_value_heads=2, **shared)
    if arch == "olmo2":
        return Olmo2Config(**shared)
    raise ValueError(arch)


@pytest.fixture
def context() -> int:
    """Context length of every tiny model."""
    return CONTEXT


@pytest.fixture
def make_model_dir(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> Callable[..., Path]:
    """Write a tiny random-init model (safetensors) and its tokenizer under ``tmp_path``."""

    def make(
        arch: str = "olmo2", *, name: str | None = None, vocab_size: int | None = None
    ) -> Path:
        directory = tmp_path / (name or arch)
        model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size or len(tokenizer)))
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return directory

    return make


@pytest.fixture
def policy(tmp_path: Path) -> LoadPolicy:
    return LoadPolicy(allowed_roots=(tmp_path,), cache_dir=tmp_path / "cache")


@pytest.fixture
def write_jsonl() -> Callable[[Path, list[dict[str, object]]], Path]:
    """Write records as JSON lines (creating parent directories)."""

    def write(path: Path, records: list[dict[str, object]]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
        return path

    return write


@pytest.fixture
def texts() -> Callable[..., list[str]]:
    """The deterministic document generator, for tests that write their own files."""
    return sample_texts
