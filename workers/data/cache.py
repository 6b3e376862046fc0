"""The tokenised-data cache: one token stream per (data fingerprint, tokenizer identity)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from workers.data.packing import TokenArray

# Bump when the stream format or how records become text changes, so old entries are ignored.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class TokenStream:
    """A domain's documents as one token stream, and where it came from.

    Attributes:
        tokens: ``doc0 EOS doc1 EOS ...`` as ``uint32`` (memory-mapped when read from the cache).
        path: The cache file.
        cache_hit: True when the stream was read from the cache, not tokenised now.
        documents: How many documents the stream holds (one EOS after each); None for a cache
            entry whose sidecar does not say.
    """

    tokens: TokenArray
    path: Path
    cache_hit: bool
    documents: int | None = None


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of everything that decides which ids a tokenizer produces for our documents.

    For fast tokenizers this is the full serialised pipeline (normaliser, pre-tokeniser, model,
    added tokens); otherwise the vocabulary. The chat template and EOS id are included because
    they change the documents and the separators.
    """
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([tokenizer.eos_token_id, tokenizer.chat_template]).encode())
    return digest.hexdigest()


def cache_key(data_fingerprint: str, tokenizer_id: str) -> str:
    """The cache entry name for a domain's data under a tokenizer.

    ``seq_len`` is deliberately not part of the key: packing is a reshape of the cached stream
    (see :func:`workers.data.packing.pack_rows`), so one entry serves every ``seq_len`` and a
    sweep that changes only ``seq_len`` still skips tokenisation.
    """
    payload = json.dumps([CACHE_FORMAT, data_fingerprint, tokenizer_id]).encode()
    return hashlib.sha256(payload).hexdigest()[:32]


def read_stream(cache_dir: Path, key: str) -> TokenStream | None:
    """Return the cached stream for ``key``, or ``None`` when there is none."""
    path = _entry(cache_dir, key)
    if not path.is_file():
        return None
    documents: int | None = None
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        documents = int(meta["documents"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # the sidecar is for people; the stream itself is complete without it
    return TokenStream(np.load(path, mmap_mode="r"), path, cache_hit=True, documents=documents)


def write_stream(cache_dir: Path, key: str, tokens: TokenArray, meta: dict[str, object]) -> Path:
    """Store ``tokens`` under ``key`` atomically, with a JSON sidecar for people.

    The file is written to a temporary name and renamed into place, so a worker killed
    mid-write, or two workers tokenising the same data at once, never leave a torn entry.

    Returns:
        The cache file.
    """
    path = _entry(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**meta, "tokens": len(tokens)}, indent=2))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, tokens)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _entry(cache_dir: Path, key: str) -> Path:
    return cache_dir / "tokens" / f"{key}.npy"
