"""Per-domain token batches for a sweep: load, tokenise once (cached), pack, sample.

Method.md §3 mixes domains in gradient space (``g(w) = sum_k w_k g_k``), so a sweep needs only
batches *per domain*; mixture weights never touch the data. Direction and evaluation batches of a
domain come from one seeded row order: take the direction batches with ``first_batch=0`` and the
evaluation batches with ``first_batch=<number of direction batches>`` and the same ``seed``, and
no packed sequence appears in both.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from workers.data.cache import (
    TokenStream,
    cache_key,
    read_stream,
    tokenizer_identity,
    write_stream,
)
from workers.data.errors import DataError
from workers.data.packing import pack_rows, sample_batches, tokenize_documents
from workers.data.policy import LoadPolicy
from workers.data.sources import DataSource, data_fingerprint, load_texts


def token_stream(
    src: DataSource,
    tokenizer: PreTrainedTokenizerBase,
    policy: LoadPolicy,
    *,
    field: str | None = None,
) -> TokenStream:
    """A domain's documents as one token stream, tokenised at most once per cache.

    Args:
        src: The domain.
        tokenizer: The model's tokenizer.
        policy: The operator's loading policy; the cache lives under ``policy.cache_dir``.
        field: Error field prefix; defaults to ``src.name``.

    Returns:
        The stream and whether it came from the cache.

    Raises:
        DataError: From loading the domain (see :func:`workers.data.sources.load_texts`).
    """
    prefix = field or src.name
    if tokenizer.eos_token_id is None:
        raise DataError("model.path", "the tokenizer has no EOS token; save it with eos_token set")
    key = cache_key(data_fingerprint(src, policy, field=prefix), tokenizer_identity(tokenizer))
    cached = read_stream(policy.cache_dir, key)
    if cached is not None:
        return cached
    texts = load_texts(src, policy, tokenizer=tokenizer, field=prefix)
    tokens = tokenize_documents(texts["text"], tokenizer)
    meta: dict[str, object] = {
        "source": {"path": src.path, "hub_id": src.hub_id, "config": src.config},
        "tokenizer": tokenizer.name_or_path,
        "documents": len(texts),
    }
    path = write_stream(policy.cache_dir, key, tokens, meta)
    return TokenStream(tokens, path, cache_hit=False, documents=len(texts))


def token_batches(
    src: DataSource,
    tokenizer: PreTrainedTokenizerBase,
    policy: LoadPolicy,
    *,
    seq_len: int,
    batch_size: int,
    num_batches: int,
    seed: int,
    field: str | None = None,
    first_batch: int = 0,
    stream: TokenStream | None = None,
) -> torch.Tensor:
    """Packed, seeded batches of one domain.

    Args:
        src: The domain.
        tokenizer: The model's tokenizer (check it with ``check_model_fits`` first).
        policy: The operator's loading policy.
        seq_len: Tokens per sequence (T).
        batch_size: Sequences per batch (B).
        num_batches: Batches to return.
        seed: Seed of the row order; same seed, same batches.
        field: Error field prefix for this domain; defaults to ``src.name``.
        first_batch: Skip this many batches of the seeded order, for disjoint evaluation
            batches (see the module docstring).
        stream: This domain's stream from :func:`token_stream`, when the caller already has it
            (it is then not read again).

    Returns:
        ``(num_batches, batch_size, seq_len)`` int64 token ids, documents separated by EOS.

    Raises:
        DataError: Non-positive sizes, a bad domain, or fewer tokens than the batches need.
    """
    prefix = field or src.name
    for name, value, least in (
        ("seq_len", seq_len, 2),
        ("batch_size", batch_size, 1),
        ("num_batches", num_batches, 1),
    ):
        if value < least:
            raise DataError(name, f"{name} is {value}; it must be at least {least}")
    if first_batch < 0:
        raise DataError("first_batch", f"first_batch is {first_batch}; it must be at least 0")
    if stream is None:
        stream = token_stream(src, tokenizer, policy, field=prefix)
    rows = pack_rows(stream.tokens, seq_len)
    needed_rows = (first_batch + num_batches) * batch_size
    if len(rows) < needed_rows:
        needed = needed_rows * seq_len
        skipped = f" after skipping {first_batch} batches" if first_batch else ""
        raise DataError(
            prefix,
            f"'{src.path or src.hub_id}' has {len(stream.tokens):,} tokens, but {num_batches} "
            f"batches x {batch_size} sequences x {seq_len} tokens{skipped} need {needed:,}; "
            "lower the sweep's batches, batch_tokens or seq_len, or add data to this domain",
        )
    return sample_batches(
        rows, batch_size=batch_size, num_batches=num_batches, seed=seed, first_batch=first_batch
    )


def training_rows(
    src: DataSource,
    tokenizer: PreTrainedTokenizerBase,
    policy: LoadPolicy,
    *,
    seq_len: int,
    seed: int,
    skip_rows: int,
    field: str | None = None,
) -> torch.Tensor:
    """The rows of a domain a trajectory trains on: its seeded row order after ``skip_rows``.

    Direction and evaluation batches are the first rows of the same seeded order (see
    :func:`token_batches`), so skipping them keeps the held-out losses of a trajectory on tokens
    it never stepped on.

    Returns:
        ``(rows, seq_len)`` int64 token ids, in the order to train on.

    Raises:
        DataError: When nothing is left after the skipped rows.
    """
    prefix = field or src.name
    stream = token_stream(src, tokenizer, policy, field=prefix)
    rows = pack_rows(stream.tokens, seq_len)
    order = np.random.default_rng(seed).permutation(len(rows))[skip_rows:]
    if len(order) == 0:
        raise DataError(
            prefix,
            f"'{src.path or src.hub_id}' has {len(rows):,} sequences of {seq_len} tokens, all of "
            "them used by direction and evaluation batches; a trajectory needs more data to "
            "train on (add data, or lower batches or batch_tokens)",
        )
    return torch.from_numpy(rows[order].astype(np.int64))
