"""Tokenising documents into one stream with EOS between them, and cutting it into batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt
import torch
from transformers import PreTrainedTokenizerBase

# Documents are tokenised this many at a time: large enough for the fast tokenizer's batch
# encoding to use both cores, small enough to keep memory flat on big corpora.
ENCODE_CHUNK = 1000

TokenArray = npt.NDArray[np.uint32]


def tokenize_documents(
    texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, *, chunk: int = ENCODE_CHUNK
) -> TokenArray:
    """Tokenise documents into one stream: ``doc0 EOS doc1 EOS ... docN EOS``.

    No BOS or other special tokens are added per document (``add_special_tokens=False``); EOS is
    the only separator, as in GPT-2 and OLMo pre-training, so packed rows look like the data the
    model was trained on.

    Args:
        texts: Documents.
        tokenizer: Must have ``eos_token_id``.
        chunk: Documents per call to the tokenizer.

    Returns:
        1-D ``uint32`` token ids (every vocabulary we support is below 2**32).
    """
    eos = tokenizer.eos_token_id
    assert isinstance(eos, int), "check_model_fits rejects tokenizers without EOS"
    pieces: list[TokenArray] = []
    for texts_chunk in _chunks(texts, chunk):
        encoded = tokenizer(texts_chunk, add_special_tokens=False, verbose=False)["input_ids"]
        flat: list[int] = []
        for ids in encoded:
            flat.extend(ids)
            flat.append(eos)
        pieces.append(np.asarray(flat, dtype=np.uint32))
    if not pieces:
        return np.zeros(0, dtype=np.uint32)
    return np.concatenate(pieces)


def pack_rows(stream: TokenArray, seq_len: int) -> TokenArray:
    """Cut a token stream into ``(n_rows, seq_len)`` rows, dropping the incomplete tail.

    Rows are contiguous and non-overlapping, so any two disjoint sets of row indices share no
    token position; that is what makes direction and evaluation batches disjoint.
    """
    n_rows = len(stream) // seq_len
    return stream[: n_rows * seq_len].reshape(n_rows, seq_len)


def sample_batches(
    rows: TokenArray, *, batch_size: int, num_batches: int, seed: int, first_batch: int = 0
) -> torch.Tensor:
    """Take batches ``first_batch .. first_batch + num_batches - 1`` of a seeded row order.

    The order is one permutation of all rows drawn from ``seed``; batch ``k`` is rows
    ``order[k*B : (k+1)*B]``. Calls with the same seed and non-overlapping batch ranges therefore
    never share a row.

    Args:
        rows: ``(n_rows, seq_len)`` from :func:`pack_rows`.
        batch_size: Sequences per batch (B).
        num_batches: Batches to return.
        seed: Seed of the row order.
        first_batch: Index of the first batch in that order.

    Returns:
        ``(num_batches, batch_size, seq_len)`` int64 token ids.
    """
    # numpy's PCG64 stream is stable across versions and platforms, so a seed names the same
    # batches on the CPU box that tested a sweep and on the GPU box that runs it.
    order = np.random.default_rng(seed).permutation(len(rows))
    start = first_batch * batch_size
    chosen = order[start : start + num_batches * batch_size]
    picked = rows[chosen]  # (num_batches * B, T)
    out = torch.from_numpy(picked.astype(np.int64))
    return out.view(num_batches, batch_size, rows.shape[1])


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
