from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from workers.data import (
    DataError,
    DataSource,
    LoadPolicy,
    token_batches,
    token_stream,
)
from workers.data.packing import pack_rows, sample_batches, tokenize_documents

pytestmark = pytest.mark.unit

JsonlWriter = Callable[[Path, list[dict[str, object]]], Path]


@pytest.fixture
def corpus(tmp_path: Path, write_jsonl: JsonlWriter, texts: Callable[..., list[str]]) -> DataSource:
    write_jsonl(tmp_path / "pt.jsonl", [{"text": t} for t in texts(400)])
    return DataSource("pretraining", path="pt.jsonl")


def test_stream_is_documents_joined_by_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    docs = ["the cat sat", "a dog ran on the mat"]
    stream = tokenize_documents(docs, tokenizer, chunk=1)
    eos = tokenizer.eos_token_id
    expected: list[int] = []
    for doc in docs:
        expected += [*tokenizer(doc, add_special_tokens=False)["input_ids"], eos]
    assert stream.tolist() == expected
    assert tokenizer.decode(stream.tolist()).split("<|endoftext|>")[:2] == docs


def test_pack_rows_and_sample_batches_closed_form() -> None:
    stream = np.arange(23, dtype=np.uint32)
    rows = pack_rows(stream, 5)  # the tail (20, 21, 22) is dropped
    assert rows.tolist() == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
        [10, 11, 12, 13, 14],
        [15, 16, 17, 18, 19],
    ]
    batches = sample_batches(rows, batch_size=2, num_batches=2, seed=3)
    order = np.random.default_rng(3).permutation(4)
    assert batches.dtype == torch.int64 and batches.shape == (2, 2, 5)
    assert batches.reshape(4, 5).tolist() == rows[order].tolist()


def test_batch_ranges_of_one_seed_share_no_row() -> None:
    rows = np.arange(40 * 3, dtype=np.uint32).reshape(40, 3)  # every row unique
    direction = sample_batches(rows, batch_size=4, num_batches=6, seed=11)
    evaluation = sample_batches(rows, batch_size=4, num_batches=4, seed=11, first_batch=6)
    direction_rows = {tuple(r) for r in direction.reshape(-1, 3).tolist()}
    evaluation_rows = {tuple(r) for r in evaluation.reshape(-1, 3).tolist()}
    assert len(direction_rows) == 24 and len(evaluation_rows) == 16
    assert not direction_rows & evaluation_rows


def test_batches_shape_determinism_and_disjointness(
    corpus: DataSource, tokenizer: PreTrainedTokenizerFast, policy: LoadPolicy
) -> None:
    kwargs: dict[str, Any] = {"seq_len": 16, "batch_size": 4, "seed": 7}
    direction = token_batches(corpus, tokenizer, policy, num_batches=3, **kwargs)
    again = token_batches(corpus, tokenizer, policy, num_batches=3, **kwargs)
    evaluation = token_batches(corpus, tokenizer, policy, num_batches=2, first_batch=3, **kwargs)
    other_seed = token_batches(
        corpus, tokenizer, policy, num_batches=3, seq_len=16, batch_size=4, seed=8
    )
    assert direction.shape == (3, 4, 16) and direction.dtype == torch.int64
    assert torch.equal(direction, again)
    assert not torch.equal(direction, other_seed)
    # Direction and evaluation batches are consecutive slices of one seeded row order.
    both = token_batches(corpus, tokenizer, policy, num_batches=5, **kwargs)
    assert torch.equal(both[:3], direction) and torch.equal(both[3:], evaluation)


def test_second_call_reads_the_cache_without_tokenising(
    corpus: DataSource,
    tokenizer: PreTrainedTokenizerFast,
    policy: LoadPolicy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    original = type(tokenizer).__call__

    def counting(self: PreTrainedTokenizerFast, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    first = token_stream(corpus, tokenizer, policy)
    assert not first.cache_hit and calls > 0
    assert first.path.parent == policy.cache_dir / "tokens"
    calls = 0
    second = token_stream(corpus, tokenizer, policy)
    assert second.cache_hit and calls == 0
    np.testing.assert_array_equal(first.tokens, second.tokens)
    # A different seq_len packs the same cached stream: still no tokenisation.
    token_batches(corpus, tokenizer, policy, seq_len=8, batch_size=2, num_batches=2, seed=0)
    assert calls == 0


def test_cache_misses_when_data_or_tokenizer_change(
    corpus: DataSource,
    tokenizer: PreTrainedTokenizerFast,
    policy: LoadPolicy,
    tmp_path: Path,
    write_jsonl: JsonlWriter,
    texts: Callable[..., list[str]],
) -> None:
    assert not token_stream(corpus, tokenizer, policy).cache_hit
    write_jsonl(tmp_path / "pt.jsonl", [{"text": t} for t in texts(400, seed=1)])
    assert not token_stream(corpus, tokenizer, policy).cache_hit
    assert token_stream(corpus, tokenizer, policy).cache_hit
    other = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|pad|>", pad_token="<|pad|>"
    )
    assert not token_stream(corpus, other, policy).cache_hit


def test_too_few_tokens_says_what_to_lower(
    corpus: DataSource, tokenizer: PreTrainedTokenizerFast, policy: LoadPolicy
) -> None:
    available = len(token_stream(corpus, tokenizer, policy).tokens)
    with pytest.raises(DataError) as info:
        token_batches(corpus, tokenizer, policy, seq_len=64, batch_size=64, num_batches=8, seed=0)
    assert info.value.field == "pretraining"
    assert f"has {available:,} tokens" in info.value.message
    assert "need 32,768" in info.value.message
    assert "lower the sweep's batches, batch_tokens or seq_len" in info.value.message


def test_sizes_are_checked_before_loading(
    tokenizer: PreTrainedTokenizerFast, policy: LoadPolicy
) -> None:
    missing = DataSource("pt", path="missing.jsonl")
    for kwargs, field in (
        ({"seq_len": 1, "batch_size": 1, "num_batches": 1}, "seq_len"),
        ({"seq_len": 8, "batch_size": 0, "num_batches": 1}, "batch_size"),
        ({"seq_len": 8, "batch_size": 1, "num_batches": 0}, "num_batches"),
    ):
        with pytest.raises(DataError) as info:
            token_batches(missing, tokenizer, policy, seed=0, **kwargs)
        assert info.value.field == field
