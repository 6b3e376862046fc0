"""Demo assets built here, nothing downloaded: corpora, a tokenizer and a tiny OLMo-2 model.

``build_demo_assets(home)`` writes ``home/demo/`` with the general and math corpora (train and
eval JSON lines), trains a byte-level BPE tokenizer on them, and pre-trains a tiny OLMo-2-style
model on the general corpus with a 5% share of arithmetic (as the probe in method.md §7 did), on
CPU in about a minute. The whole directory is built under a temporary name and renamed into
place with ``manifest.json`` inside, so a present ``home/demo/manifest.json`` means a complete
build and is reused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import Olmo2Config, Olmo2ForCausalLM, PreTrainedModel

from sharpmix.assets.corpora import general_documents, math_documents
from sharpmix.assets.vocab import train_tokenizer
from workers.data.packing import pack_rows, tokenize_documents

log = logging.getLogger(__name__)

# Bump when anything below changes what gets built; an older build is then rebuilt.
DEMO_VERSION = 3
DEMO_DIR = "demo"
MANIFEST = "manifest.json"

VOCAB_SIZE = 512
SEQ_LEN = 128  # training sequence length; the model's context is twice that
GENERAL_DOCS, MATH_DOCS, EVAL_DOCS = 6000, 3000, 400
MATH_SHARE = 0.05  # share of arithmetic rows in pre-training (method.md §7 used 5%)
PRETRAIN_STEPS, BATCH_SIZE, PEAK_LR, WARMUP = 300, 16, 3e-3, 30


@dataclass(frozen=True)
class DemoAssets:
    """Where the demo assets are.

    Attributes:
        home: The ``SHARPMIX_HOME`` they were built under.
        model_dir: ``save_pretrained`` directory of the model and tokenizer (safetensors).
        general_path: General corpus, JSON lines with a ``text`` field (the pre-training domain).
        math_path: Arithmetic word problems, same format (the fine-tuning domain).
        general_eval_path: Held-out general documents, e.g. for a verification fine-tune.
        math_eval_path: Held-out arithmetic problems.
        manifest_path: Written last; holds sizes, seed, build time and pre-training losses.
    """

    home: Path
    model_dir: Path
    general_path: Path
    math_path: Path
    general_eval_path: Path
    math_eval_path: Path
    manifest_path: Path

    @classmethod
    def under(cls, home: Path) -> DemoAssets:
        """The asset paths below ``home`` (whether or not they exist yet)."""
        root = home / DEMO_DIR
        return cls(
            home=home,
            model_dir=root / "model",
            general_path=root / "general.jsonl",
            math_path=root / "math.jsonl",
            general_eval_path=root / "general_eval.jsonl",
            math_eval_path=root / "math_eval.jsonl",
            manifest_path=root / MANIFEST,
        )

    def manifest(self) -> dict[str, object]:
        """The build's manifest."""
        loaded: dict[str, object] = json.loads(self.manifest_path.read_text())
        return loaded


def build_demo_assets(home: Path, *, force: bool = False, seed: int = 0) -> DemoAssets:
    """Build the demo assets under ``home/demo``, or reuse a complete earlier build.

    Args:
        home: ``SHARPMIX_HOME``.
        force: Rebuild even when a complete build of this version is present.
        seed: Seed of the corpora, tokenizer data order and model initialisation.

    Returns:
        The asset paths; ``manifest()`` has the build's numbers.
    """
    assets = DemoAssets.under(home)
    if not force and _complete(assets, seed):
        log.info("reusing demo assets in %s", assets.manifest_path.parent)
        return assets
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=home))
    try:
        _build(DemoAssets.under(staging), seed)
        target = home / DEMO_DIR
        if target.exists():
            shutil.rmtree(target)
        # A rename is atomic: readers see either no demo directory or a complete one.
        os.replace(staging / DEMO_DIR, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return assets


def _complete(assets: DemoAssets, seed: int) -> bool:
    if not assets.manifest_path.is_file():
        return False
    manifest = assets.manifest()
    return manifest.get("version") == DEMO_VERSION and manifest.get("seed") == seed


def _build(assets: DemoAssets, seed: int) -> None:
    started = time.perf_counter()
    log.info(
        "building the demo assets once (later runs reuse them): 4 corpora, a tokenizer, then "
        "%d pre-training steps of a tiny model",
        PRETRAIN_STEPS,
    )
    root = assets.manifest_path.parent
    root.mkdir(parents=True)
    corpora = {
        assets.general_path: general_documents(GENERAL_DOCS, seed=seed, world_seed=seed),
        assets.general_eval_path: general_documents(EVAL_DOCS, seed=seed + 1, world_seed=seed),
        assets.math_path: math_documents(MATH_DOCS, seed=seed),
        assets.math_eval_path: math_documents(EVAL_DOCS, seed=seed + 1),
    }
    for path, documents in corpora.items():
        path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in documents))
    train_general, train_math = corpora[assets.general_path], corpora[assets.math_path]
    tokenizer = train_tokenizer([*train_general, *train_math], vocab_size=VOCAB_SIZE)
    rows = {
        name: torch.from_numpy(
            pack_rows(tokenize_documents(docs, tokenizer), SEQ_LEN).astype(np.int64)
        )
        for name, docs in (
            ("general", train_general),
            ("math", train_math),
            ("general_eval", corpora[assets.general_eval_path]),
            ("math_eval", corpora[assets.math_eval_path]),
        )
    }
    torch.manual_seed(seed)
    model = Olmo2ForCausalLM(demo_config(len(tokenizer), tokenizer.eos_token_id))
    before = {k: evaluate_loss(model, rows[k]) for k in ("general_eval", "math_eval")}
    with _threads(2):
        steps_s = pretrain(model, rows["general"], rows["math"], seed=seed)
    after = {k: evaluate_loss(model, rows[k]) for k in ("general_eval", "math_eval")}
    log.info("demo pre-training loss before %s after %s", before, after)
    model.save_pretrained(assets.model_dir, safe_serialization=True)
    tokenizer.save_pretrained(assets.model_dir)
    manifest = {
        "version": DEMO_VERSION,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": {k: getattr(model.config, k) for k in _CONFIG_KEYS},
        "tokens": {name: int(r.numel()) for name, r in rows.items()},
        "pretrain": {
            "steps": PRETRAIN_STEPS,
            "batch_size": BATCH_SIZE,
            "seq_len": SEQ_LEN,
            "peak_lr": PEAK_LR,
            "math_share": MATH_SHARE,
            "seconds": steps_s,
        },
        "eval_loss_before": before,
        "eval_loss_after": after,
        "build_seconds": time.perf_counter() - started,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    tmp = assets.manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, assets.manifest_path)


_CONFIG_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "vocab_size",
)


def demo_config(vocab_size: int, eos_token_id: int | None) -> Olmo2Config:
    """The demo model's shape: OLMo-2 (QK-norm, post-norm blocks), 4 x 128, ~0.9M parameters."""
    return Olmo2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=2 * SEQ_LEN,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        bos_token_id=eos_token_id,
        tie_word_embeddings=True,
    )


def pretrain(
    model: PreTrainedModel, general: torch.Tensor, math_rows: torch.Tensor, *, seed: int
) -> float:
    """Pre-train ``model`` on general rows with a ``MATH_SHARE`` of arithmetic rows.

    AdamW, linear warm-up then cosine decay to 10% of the peak.

    Args:
        model: The model, trained in place.
        general: ``(N, T)`` packed general-corpus rows.
        math_rows: ``(M, T)`` packed arithmetic rows.
        seed: Seed of the batch draws.

    Returns:
        Seconds spent training.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=PEAK_LR, weight_decay=0.1, betas=(0.9, 0.95)
    )
    model.train()
    started = time.perf_counter()
    for step in range(PRETRAIN_STEPS):
        lr = _schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        use_math = torch.rand(BATCH_SIZE, generator=generator) < MATH_SHARE
        batch = torch.where(  # (B, T)
            use_math[:, None],
            math_rows[torch.randint(len(math_rows), (BATCH_SIZE,), generator=generator)],
            general[torch.randint(len(general), (BATCH_SIZE,), generator=generator)],
        )
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == PRETRAIN_STEPS - 1:
            spent = time.perf_counter() - started
            left = spent / (step + 1) * (PRETRAIN_STEPS - step - 1)
            log.info(
                "demo pre-training step %d/%d loss %.3f lr %.2e (%.0f s spent, about %.0f s left)",
                step + 1,
                PRETRAIN_STEPS,
                loss.item(),
                lr,
                spent,
                left,
            )
    model.train(False)  # eval mode
    return time.perf_counter() - started


@dataclass(frozen=True)
class Forgetting:
    """Held-out losses before and after fine-tuning the demo model on math only.

    Attributes:
        steps: AdamW steps taken on arithmetic batches.
        lr: Their learning rate.
        general_before: General-corpus eval loss of the pre-trained model.
        general_after: The same after fine-tuning (forgetting makes it rise).
        math_before: Arithmetic eval loss of the pre-trained model.
        math_after: The same after fine-tuning (learning makes it fall).
    """

    steps: int
    lr: float
    general_before: float
    general_after: float
    math_before: float
    math_after: float


def measure_forgetting(
    assets: DemoAssets, *, steps: int = 40, lr: float = 1e-3, seed: int = 0
) -> Forgetting:
    """Fine-tune the demo model on math only and measure both held-out losses.

    This is the demo's ground truth (method.md §5): pure fine-tuning must raise the general loss
    while the math loss falls, or the demo cannot show a mixing trade-off.

    Args:
        assets: A complete demo build.
        steps: AdamW steps on math batches of ``BATCH_SIZE`` x ``SEQ_LEN`` tokens.
        lr: Constant learning rate.
        seed: Seed of the batch draws.
    """
    tokenizer = transformers.AutoTokenizer.from_pretrained(assets.model_dir)
    model = Olmo2ForCausalLM.from_pretrained(assets.model_dir, use_safetensors=True)

    def rows(path: Path) -> torch.Tensor:  # (N, SEQ_LEN)
        documents = [json.loads(line)["text"] for line in path.read_text().splitlines()]
        packed = pack_rows(tokenize_documents(documents, tokenizer), SEQ_LEN)
        return torch.from_numpy(packed.astype(np.int64))

    general_eval, math_eval = rows(assets.general_eval_path), rows(assets.math_eval_path)
    math_train = rows(assets.math_path)
    with _threads(2):
        general_before = evaluate_loss(model, general_eval)
        math_before = evaluate_loss(model, math_eval)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            batch = math_train[torch.randint(len(math_train), (BATCH_SIZE,), generator=generator)]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        general_after = evaluate_loss(model, general_eval)
        math_after = evaluate_loss(model, math_eval)
    return Forgetting(steps, lr, general_before, general_after, math_before, math_after)


@torch.no_grad()
def evaluate_loss(model: PreTrainedModel, rows: torch.Tensor, *, batch_size: int = 32) -> float:
    """Mean next-token loss of ``model`` over all ``(N, T)`` rows, in eval mode."""
    was_training = model.training
    model.train(False)  # eval mode: no dropout
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


def _schedule(step: int) -> float:
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, PRETRAIN_STEPS - WARMUP)
    return PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block (2 cores is the target), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
