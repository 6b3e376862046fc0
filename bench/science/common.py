"""Shared pieces of the evidence experiments: torch setup, generated corpora, model, timing, JSON.

Everything here runs on the bare GPU box (torch, transformers, tokenizers, numpy) and on a CPU
laptop with `--tiny` sizes. Nothing is downloaded: the corpora come from `sharpmix.assets.corpora`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import Olmo2Config, Olmo2ForCausalLM

REPO = Path(__file__).resolve().parents[2]


def setup_torch(threads: int | None = None) -> torch.device:
    """Pick the device and make float32 mean float32.

    TF32 matmuls round their inputs to a 10-bit mantissa (relative 2**-11), the same order as a
    fine-tuning step `1e-5 * sign(g)` on weights of size ~0.02: the perturbation of a line search
    would be rounded away (method.md §2, "Precision"). So every fp32 forward here is real fp32;
    only training steps use bf16 autocast, explicitly.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Where the modules `_module` loads live: the generated corpora and the tokenizer are the demo's
# assets, the packing is the data loaders'.
_PACKAGES = {"corpora": "sharpmix.assets", "vocab": "sharpmix.assets", "packing": "workers.data"}


def _module(name: str) -> ModuleType:
    """Import `sharpmix.assets.<name>` or `workers.data.<name>`, or load its file alone when the
    package cannot import.

    `workers/data/__init__.py` imports `sources.py`, which needs `datasets`; the GPU image has no
    `datasets`. The three modules used here (corpora, vocab, packing) import none of it, so they
    are loaded straight from their files in that case.
    """
    full = f"{_PACKAGES[name]}.{name}"
    try:
        return importlib.import_module(full)
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            full, REPO.joinpath(*_PACKAGES[name].split(".")) / f"{name}.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        return module


class WordEncoder:
    """The trained tokenizer's ids for a document, memoised per word.

    The byte-level pre-tokenizer cuts text at spaces into `word` / ` word` pieces, and BPE never
    merges across pieces, so a document's ids are the concatenation of its pieces' ids. The
    generated corpora have a few hundred distinct words, so a dictionary makes tokenising
    millions of tokens take seconds instead of minutes. `check` compares with the tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        self.cache: dict[str, list[int]] = {}

    def _piece(self, piece: str) -> list[int]:
        ids = self.cache.get(piece)
        if ids is None:
            ids = list(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
            self.cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of one document (no EOS)."""
        words = text.split(" ")
        out = list(self._piece(words[0]))
        for word in words[1:]:
            out += self._piece(" " + word)
        return out

    def stream(self, texts: Sequence[str]) -> np.ndarray:
        """`doc0 EOS doc1 EOS ...` as one uint32 array (as `workers.data.packing` builds it)."""
        flat: list[int] = []
        for text in texts:
            flat += self.encode(text)
            flat.append(self.eos)
        return np.asarray(flat, dtype=np.uint32)

    def check(self, texts: Sequence[str]) -> None:
        """Raise if the memoised ids differ from the tokenizer's own on `texts`."""
        for text in texts:
            want = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if self.encode(text) != want:
                raise AssertionError(f"word cache disagrees with the tokenizer on {text!r}")


@dataclass
class Corpus:
    """Packed `(N, seq_len)` int64 rows of every split, and the vocabulary.

    Attributes:
        vocab_size: `len(tokenizer)`.
        eos: The EOS id (also used as pad and bos).
        rows: Split name -> rows: `general` (pre-training text), `pt_math` (the 5% arithmetic of
            pre-training), `ft_math` (fine-tuning arithmetic, other problems), `general_eval`,
            `math_eval` (held out, for measurements and ground truth).
        tokens: Split name -> tokens.
        seconds: Time to generate, train the tokenizer and tokenise.
    """

    vocab_size: int
    eos: int
    rows: dict[str, Tensor]
    tokens: dict[str, int]
    seconds: float


def build_corpus(docs: dict[str, int], *, seq_len: int, vocab_size: int, seed: int) -> Corpus:
    """Generate the corpora, train the tokenizer on part of them and pack every split.

    Args:
        docs: Documents per split (keys as in `Corpus.rows`).
        seq_len: Row length in tokens.
        vocab_size: Requested vocabulary; the generated language saturates well below 4k.
        seed: Base seed; every split gets its own so no document is shared by design.
    """
    started = time.perf_counter()
    corpora, vocab, packing = _module("corpora"), _module("vocab"), _module("packing")
    world = seed  # one fixed world for train and eval: the facts are what forgetting erodes
    texts = {
        "general": corpora.general_documents(docs["general"], seed=seed, world_seed=world),
        "general_eval": corpora.general_documents(
            docs["general_eval"], seed=seed + 1, world_seed=world
        ),
        "pt_math": corpora.math_documents(docs["pt_math"], seed=seed + 2),
        "ft_math": corpora.math_documents(docs["ft_math"], seed=seed + 3),
        "math_eval": corpora.math_documents(docs["math_eval"], seed=seed + 4),
    }
    sample = texts["general"][:20000] + texts["pt_math"][:5000]
    tokenizer = vocab.train_tokenizer(sample, vocab_size=vocab_size, chat_template=False)
    encoder = WordEncoder(tokenizer)
    encoder.check(texts["general_eval"][:200] + texts["math_eval"][:200])
    rows = {}
    for name, split in texts.items():
        packed = packing.pack_rows(encoder.stream(split), seq_len)
        rows[name] = torch.from_numpy(packed.astype(np.int64))
    return Corpus(
        vocab_size=len(tokenizer),
        eos=encoder.eos,
        rows=rows,
        tokens={k: int(v.numel()) for k, v in rows.items()},
        seconds=time.perf_counter() - started,
    )


def olmo2(
    vocab_size: int, eos: int, *, hidden: int, layers: int, heads: int, seq_len: int
) -> nn.Module:
    """An OLMo-2-shaped causal LM (QK-norm, post-norm blocks, SwiGLU, untied embeddings).

    Eager attention: power iteration needs double backward, which fused SDPA kernels lack.
    """
    config = Olmo2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=2 * seq_len,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
        tie_word_embeddings=False,
        attn_implementation="eager",  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    )
    return Olmo2ForCausalLM(config)


def lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    """Mean next-token loss of a `(B, T)` batch, in whatever precision the caller set up."""
    loss: Tensor = model(input_ids=batch, labels=batch).loss
    return loss


@torch.no_grad()
def eval_loss(model: nn.Module, rows: Tensor, *, chunk: int) -> float:
    """Mean next-token loss over `(N, T)` rows in fp32 eval mode (all rows have equal length)."""
    was = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        total += float(lm_loss(model, part)) * len(part)
    model.train(was)
    return total / len(rows)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device, into: dict[str, float], key: str) -> Iterator[None]:
    """Add the GPU-synchronised wall seconds of the block to `into[key]`."""
    sync(device)
    started = time.perf_counter()
    try:
        yield
    finally:
        sync(device)
        into[key] = into.get(key, 0.0) + time.perf_counter() - started


def clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no inf/nan), tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        return clean(value.item())
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON atomically, so a run killed mid-write leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean(obj), indent=1))
    os.replace(tmp, path)


def wsd_lr(step: int, *, total: int, peak: float, warmup: int, decay_frac: float) -> float:
    """Warmup-stable-decay: linear warmup, constant, then linear decay to 0 over the last part."""
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_start = int(total * (1 - decay_frac))
    if step < decay_start:
        return peak
    return peak * max(0.0, (total - step) / max(1, total - decay_start))
