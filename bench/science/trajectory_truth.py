"""Ground truth on real text for trajectory sweeps: does the service's answer hold over N steps?

One process, one GPU, in four parts (each writes its JSON as soon as it has it):

1. **Model.** A byte-level BPE tokenizer (``sharpmix.assets.vocab``, ~8k pieces) trained on the
   general text (Perl documentation and man pages, `debian_corpora.py`), and a Llama
   (``LlamaForCausalLM``, ~13 M parameters) pre-trained on it with AdamW and a warmup-stable-decay
   schedule, saved as a Hugging Face directory that `workers.data.load_model` loads.
2. **Grid.** From that checkpoint, for every (seed, ratio, lr) cell: constant-rate AdamW (fresh
   state, betas 0.9/0.95, no weight decay, bf16 autocast over fp32 master weights) on batches
   whose share ``r`` of sequences (and so of tokens) is general text and the rest TeX Live's LaTeX
   sources, and the held-out general and LaTeX losses (fp32, documents never trained on) at
   ``eval_steps``. Cells run side by side as stacked copies (`stacked_llama.py`); one cell is
   re-run with the Hugging Face model and ``torch.optim.AdamW`` as a check of that.
3. **Service.** :func:`service_answers`: at each grid rate as the planned rate, the repository's
   own worker code, called as the worker calls it: `workers.sweep.prepare` and
   `PreparedSweep.measure_ratio` (the first-step screen), `workers.trajectory.run_trajectory`
   (K real steps on each mix, measured every m) with its forecast to N, and
   `workers.recommend.recommend`.
4. `analyze_trajectory.py` (on CPU, afterwards) compares 3 with 2.

GPU (one call; see docs/evidence.md for the exact command)::

    PYTHONUNBUFFERED=1 python3 -m bench.science.trajectory_truth --data ../.data/science --out $OUT

CPU check of the same code at toy sizes (numbers meaningless)::

    .venv/bin/python -m bench.science.trajectory_truth --tiny --data /work/main/.data/science
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

from bench.science.common import REPO, _module, setup_torch, sync, write_json, wsd_lr
from bench.science.debian_corpora import read_jsonl_gz
from bench.science.stacked_llama import StackedAdamW, StackedLlama

SPLITS = ("general_train", "general_eval", "latex_train", "latex_eval")


@dataclass(frozen=True)
class TruthConfig:
    """Every size of the run.

    Attributes:
        vocab_size: BPE pieces asked for.
        seq_len: Tokens per sequence (pre-training, grid, service).
        hidden, layers, heads, intermediate: Llama shape.
        docs: Documents read per split (None: all).
        pre_rows: Sequences per pre-training step.
        pre_max_steps, pre_min_steps, pre_budget_s: Steps, fitted to the budget after timing.
        pre_peak_lr, pre_warmup, pre_decay_frac, pre_weight_decay, pre_clip: AdamW schedule.
        ratios: Shares of general sequences in a fine-tuning batch.
        lrs: Constant fine-tuning rates of the grid (also the planned rates asked of the service).
        seeds: Data-order seeds.
        steps: Steps per cell (the largest K).
        eval_steps: Steps after which the held-out losses are taken.
        batch_rows: Sequences per fine-tuning step (each ratio times this is a whole number).
        group: Cells trained side by side.
        eval_rows: Held-out sequences per set for the ground truth.
        eval_chunk: Sequences per evaluation forward (per copy).
        betas, eps: Fine-tuning AdamW.
        check_cell: (seed, ratio, lr) re-run with the Hugging Face model.
        planned_steps: N of the service's planned run (the grid's ``steps``).
        tolerance: Largest acceptable rise of the pre-training loss (nats).
        trajectory_steps, measure_every: K and m of the service's trajectories.
        sweep_batches: B of the first-step screen.
    """

    vocab_size: int = 8192
    seq_len: int = 256
    hidden: int = 320
    layers: int = 6
    heads: int = 5
    intermediate: int = 864
    docs: int | None = None
    pre_rows: int = 64
    pre_max_steps: int = 1200
    pre_min_steps: int = 600
    pre_budget_s: float = 70.0
    pre_peak_lr: float = 2e-3
    pre_warmup: int = 100
    pre_decay_frac: float = 0.3
    pre_weight_decay: float = 0.1
    pre_clip: float = 1.0
    ratios: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.35, 0.5)
    lrs: tuple[float, ...] = (3e-5, 1e-4, 3e-4, 1e-3)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 300
    eval_steps: tuple[int, ...] = (10, 30, 50, 100, 200, 300)
    batch_rows: int = 40
    group: int = 12
    eval_rows: int = 128
    eval_chunk: int = 16
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    check_cell: tuple[int, float, float] = (0, 0.0, 3e-4)
    planned_steps: int = 300
    tolerance: float = 0.02
    trajectory_steps: int = 100
    measure_every: int = 10
    sweep_batches: int = 8
    ablation_measure_every: int = 20

    @classmethod
    def tiny(cls) -> TruthConfig:
        """CPU-debug sizes: minutes on two cores, numbers meaningless."""
        return cls(
            vocab_size=512,
            seq_len=32,
            hidden=32,
            layers=2,
            heads=2,
            intermediate=48,
            docs=60,
            pre_rows=8,
            pre_max_steps=40,
            pre_min_steps=40,
            pre_warmup=5,
            ratios=(0.0, 0.25, 0.5),
            lrs=(1e-3, 1e-2),
            steps=12,
            eval_steps=(2, 6, 12),
            batch_rows=4,
            group=4,
            eval_rows=8,
            eval_chunk=4,
            check_cell=(0, 0.0, 1e-2),
            planned_steps=12,
            trajectory_steps=6,
            measure_every=2,
            sweep_batches=2,
            ablation_measure_every=3,
        )


def load_corpora(folder: Path, limit: int | None) -> dict[str, list[str]]:
    """The four splits written by `debian_corpora.py`."""
    missing = [s for s in SPLITS if not (folder / f"{s}.jsonl.gz").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}.jsonl.gz; build them with "
            "`python -m bench.science.debian_corpora --install --out <folder>`"
        )
    return {s: read_jsonl_gz(folder / f"{s}.jsonl.gz", limit) for s in SPLITS}


def tokenize(texts: dict[str, list[str]], cfg: TruthConfig) -> tuple[Any, dict[str, Tensor]]:
    """Train the tokenizer on the general training text and pack every split into rows."""
    vocab, packing = _module("vocab"), _module("packing")
    tokenizer = vocab.train_tokenizer(
        texts["general_train"], vocab_size=cfg.vocab_size, chat_template=False
    )
    rows = {}
    for name, docs in texts.items():
        stream = packing.tokenize_documents(docs, tokenizer)
        rows[name] = torch.from_numpy(packing.pack_rows(stream, cfg.seq_len).astype(np.int64))
    return tokenizer, rows


def grid_documents(docs: list[str], tokenizer: Any, tokens: int) -> int:
    """How many leading documents the grid's first ``tokens`` held-out tokens come from."""
    total = 0
    for n, doc in enumerate(docs, 1):
        total += len(tokenizer(doc, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        if total >= tokens:
            return n
    return len(docs)


def llama_config(cfg: TruthConfig, vocab_size: int, eos: int) -> LlamaConfig:
    """The Llama shape of the run (default rotary embedding, SwiGLU, untied head, SDPA)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=2 * cfg.seq_len,
        eos_token_id=eos,
        bos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
        attn_implementation="sdpa",  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    )


@torch.no_grad()
def hf_eval(model: torch.nn.Module, rows: Tensor, chunk: int) -> float:
    """Mean next-token loss of a Hugging Face model over ``rows``, fp32, eval mode."""
    was = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        total += float(model(input_ids=part, labels=part).loss) * len(part)
    model.train(was)
    return total / len(rows)


def pretrain(
    cfg: TruthConfig,
    rows: dict[str, Tensor],
    tokenizer: Any,
    device: torch.device,
    model_dir: Path,
) -> dict[str, Any]:
    """Pre-train the Llama on the general text, save it with its tokenizer; return the record."""
    torch.manual_seed(0)
    config = llama_config(cfg, len(tokenizer), int(tokenizer.eos_token_id))
    model = LlamaForCausalLM(config).to(device)  # type: ignore[arg-type]  # transformers' .to
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.pre_peak_lr,
        betas=(0.9, 0.95),
        weight_decay=cfg.pre_weight_decay,
    )
    train = rows["general_train"].to(device)
    evals = {k: rows[k][: cfg.eval_rows].to(device) for k in ("general_eval", "latex_eval")}
    gen = torch.Generator(device="cpu").manual_seed(0)
    bf16 = device.type == "cuda"
    total, calib = cfg.pre_max_steps, (5, 25)
    losses: list[tuple[int, float]] = []
    points: list[dict[str, Any]] = []
    started = time.perf_counter()
    t_calib = started
    step = 0
    model.train()
    while step < total:
        if step == calib[0]:
            sync(device)
            t_calib = time.perf_counter()
        if step == calib[1] and cfg.pre_min_steps < cfg.pre_max_steps:
            sync(device)
            per_step = (time.perf_counter() - t_calib) / (calib[1] - calib[0])
            total = int(min(cfg.pre_max_steps, max(cfg.pre_min_steps, cfg.pre_budget_s / per_step)))
            print(f"pretrain: {per_step * 1e3:.1f} ms/step -> {total} steps", flush=True)
        lr = wsd_lr(
            step,
            total=total,
            peak=cfg.pre_peak_lr,
            warmup=cfg.pre_warmup,
            decay_frac=cfg.pre_decay_frac,
        )
        for group in opt.param_groups:
            group["lr"] = lr
        batch = train[torch.randint(len(train), (cfg.pre_rows,), generator=gen).to(device)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.pre_clip)
        opt.step()
        if step % 10 == 0 or step == total - 1:
            losses.append((step, float(loss.detach())))
        if step % max(1, total // 8) == 0 or step == total - 1:
            point = {"step": step, "lr": lr}
            point |= {k: hf_eval(model, v, cfg.eval_chunk) for k, v in evals.items()}
            points.append(point)
            print(f"pretrain step {step} lr {lr:.2e} loss {losses[-1][1]:.3f} {point}", flush=True)
        step += 1
    sync(device)
    seconds = time.perf_counter() - started
    model.eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {
        "parameters": params,
        "config": config.to_dict(),
        "steps": total,
        "tokens_seen": total * cfg.pre_rows * cfg.seq_len,
        "seconds": seconds,
        "train_losses": losses,
        "points": points,
        "final_eval": {k: hf_eval(model, v, cfg.eval_chunk) for k, v in evals.items()},
    }


def cell_rows(
    seed: int, ratio: float, cfg: TruthConfig, sizes: tuple[int, int]
) -> Iterator[tuple[Tensor, Tensor]]:
    """Per step, the indices of the general and LaTeX training rows of one cell.

    Every cell of a seed walks the same two seeded row orders (general, LaTeX) from their
    starts, taking ``round(ratio * batch_rows)`` general rows and the rest LaTeX each step, so
    cells of one seed differ only in their ratio and rate, never in which documents they saw
    first. The orders wrap around (another epoch) if a run outlasts them.
    """
    rng = np.random.default_rng(1000 + seed)
    orders = [torch.from_numpy(rng.permutation(n)) for n in sizes]
    n_general = round(ratio * cfg.batch_rows)
    counts = (n_general, cfg.batch_rows - n_general)
    cursor = [0, 0]
    for _ in range(cfg.steps):
        picked = []
        for k in range(2):
            index = (torch.arange(counts[k]) + cursor[k]) % sizes[k]
            picked.append(orders[k][index])
            cursor[k] += counts[k]
        yield picked[0], picked[1]


def _evaluate(
    model: StackedLlama,
    evals: dict[str, Tensor],
    history: list[dict[str, Any]],
    step: int,
    chunk: int,
) -> None:
    """Every copy's held-out losses after ``step`` steps, into its history."""
    for name, eval_rows in evals.items():
        values = model.eval_losses(eval_rows, chunk=chunk)
        for h, v in zip(history, values, strict=True):
            h["losses"].setdefault(str(step), {})[name] = v


def _cells(cfg: TruthConfig) -> list[tuple[int, float, float]]:
    # Rate outermost: a run stopped by its deadline loses whole rates, never one seed of a rate.
    return [(s, r, lr) for lr in cfg.lrs for s in cfg.seeds for r in cfg.ratios]


def run_grid(
    cfg: TruthConfig,
    rows: dict[str, Tensor],
    model_dir: Path,
    device: torch.device,
    *,
    deadline: float,
    on_group: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every (seed, ratio, lr) cell, ``cfg.group`` at a time as stacked copies."""
    config = LlamaConfig.from_pretrained(model_dir)
    base_model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state = {k: v.detach() for k, v in base_model.state_dict().items()}
    general, latex = rows["general_train"].to(device), rows["latex_train"].to(device)
    evals = {
        "general": rows["general_eval"][: cfg.eval_rows].to(device),
        "latex": rows["latex_eval"][: cfg.eval_rows].to(device),
    }
    bf16 = device.type == "cuda"
    cells = _cells(cfg)
    record: dict[str, Any] = {"cells": [], "groups": [], "stopped_by_deadline": False}
    started = time.perf_counter()
    per_group = 0.0
    for first in range(0, len(cells), cfg.group):
        if time.perf_counter() + per_group > deadline:
            record["stopped_by_deadline"] = True
            break
        t0 = time.perf_counter()
        group = cells[first : first + cfg.group]
        model = StackedLlama(config, state, len(group), device)
        opt = StackedAdamW(model.parameters(), [c[2] for c in group], betas=cfg.betas, eps=cfg.eps)
        streams = [cell_rows(s, r, cfg, (len(general), len(latex))) for s, r, _ in group]
        history: list[dict[str, Any]] = [{"losses": {}, "train": []} for _ in group]

        _evaluate(model, evals, history, 0, cfg.eval_chunk)
        for step in range(1, cfg.steps + 1):
            picks = [next(s) for s in streams]
            ids = torch.stack([torch.cat([general[g], latex[f]]) for g, f in picks])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                losses = model.losses(ids)
            opt.zero_grad()
            losses.sum().backward()  # type: ignore[no-untyped-call]
            opt.step()
            if step % 10 == 0 or step == 1:
                for h, v in zip(history, losses.detach().tolist(), strict=True):
                    h["train"].append((step, v))
            if step in cfg.eval_steps:
                _evaluate(model, evals, history, step, cfg.eval_chunk)
        for (seed, ratio, lr), h in zip(group, history, strict=True):
            base = h["losses"]["0"]
            record["cells"].append(
                {
                    "seed": seed,
                    "ratio": ratio,
                    "lr": lr,
                    "losses": h["losses"],
                    "drift": {
                        k: {n: v[n] - base[n] for n in v}
                        for k, v in h["losses"].items()
                        if k != "0"
                    },
                    "train_losses": h["train"],
                }
            )
        sync(device)
        per_group = time.perf_counter() - t0
        record["groups"].append({"cells": len(group), "seconds": per_group})
        print(f"grid: {first + len(group)}/{len(cells)} cells, {per_group:.1f}s", flush=True)
        del model, opt
        if on_group is not None:
            on_group(record)
    record["seconds"] = time.perf_counter() - started
    record["optimizer_steps"] = len(record["cells"]) * cfg.steps
    record["eval_tokens_per_set"] = cfg.eval_rows * cfg.seq_len
    record["forwards_eval"] = len(record["cells"]) * 2 * (len(cfg.eval_steps) + 1)
    return record


def check_cell(
    cfg: TruthConfig, rows: dict[str, Tensor], model_dir: Path, device: torch.device
) -> dict[str, Any]:
    """One cell again with ``LlamaForCausalLM`` and ``torch.optim.AdamW`` (same data order)."""
    seed, ratio, lr = cfg.check_cell
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(device)  # type: ignore[arg-type]  # transformers wraps .to
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0)
    general, latex = rows["general_train"].to(device), rows["latex_train"].to(device)
    evals = {
        "general": rows["general_eval"][: cfg.eval_rows].to(device),
        "latex": rows["latex_eval"][: cfg.eval_rows].to(device),
    }
    bf16 = device.type == "cuda"
    losses = {"0": {k: hf_eval(model, v, cfg.eval_chunk) for k, v in evals.items()}}
    started = time.perf_counter()
    for step, (g, f) in enumerate(cell_rows(seed, ratio, cfg, (len(general), len(latex))), 1):
        batch = torch.cat([general[g], latex[f]])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in cfg.eval_steps:
            losses[str(step)] = {k: hf_eval(model, v, cfg.eval_chunk) for k, v in evals.items()}
    sync(device)
    base = losses["0"]
    return {
        "seed": seed,
        "ratio": ratio,
        "lr": lr,
        "losses": losses,
        "drift": {k: {n: v[n] - base[n] for n in v} for k, v in losses.items() if k != "0"},
        "seconds": time.perf_counter() - started,
    }


@dataclass
class _Row:
    """A measurement row as the recommendation rules read it (the database row's fields)."""

    ratio: float
    eval_set: str
    role: str
    status: str
    eta_c: float | None
    eta_c_low: float | None
    spread: float | None
    loss_change: float | None


@dataclass
class _TrajectoryRow:
    """A finished trajectory task as the rules read it (the database row's fields)."""

    ratio: float | None
    steps_done: int
    pruned: bool
    forecast: list[Any] | None


def _plain_jsonl(src: Path, dst: Path, limit: int | None) -> None:
    """The service reads ``.jsonl``; the corpora travel gzipped (first ``limit`` lines)."""
    with gzip.open(src, "rb") as fin, dst.open("wb") as fout:
        if limit is None:
            shutil.copyfileobj(fin, fout)
            return
        for n, line in enumerate(fin):
            if n >= limit:
                break
            fout.write(line)


def _json_ready(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _json_ready(v) for k, v in asdict(obj).items()}
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# The service's answers. Everything below calls the repository's worker code as the worker does;
# nothing here re-implements a rule, a measurement or a forecast.
# --------------------------------------------------------------------------------------------
def service_answers(
    cfg: TruthConfig,
    lrs: tuple[float, ...],
    model_dir: Path,
    data: Path,
    device: torch.device,
    *,
    deadline: float,
    grid_docs: int | None = None,
    plan: int | None = None,
    on_rate: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """At each planned rate: first-step screen, trajectories with forecasts, recommendations.

    With ``plan`` (run 8 on): trajectories only on the ``plan`` ratios that the worker's own
    planner picks from the screen (``workers.recommend.plan_trajectories``, what a sweep with
    ``ratios: auto`` and ``trajectory.ratios: plan`` runs); else on every ratio.

    With ``grid_docs`` (run 6 on): the pre-training set is the text the model was pre-trained
    on, so ``pretraining.within_tolerance`` is false and two held-out retention sets are guarded
    instead: a seeded sample of every held-out document, and exactly the held-out documents the
    grid measures (``grid_docs`` of them).

    The sweep: pre-training set = the general training text, fine-tuning set = the LaTeX
    training text, one retention set = the held-out general documents (the grid's ground truth
    is measured on held-out documents too); the grid's ratios; ``batch_tokens`` = the grid's
    tokens per step, so a trajectory step is a grid step; fresh AdamW (0.9, 0.95, no decay);
    constant schedule, ``planned_steps`` N, ``trajectory`` K and m, ``tolerance``.
    """
    from contract.mix import Candidate
    from contract.spec import (
        AdamWSpec,
        DataRef,
        FinetuneRef,
        ModelRef,
        PretrainingRef,
        SweepSpec,
        TrajectorySpec,
    )
    from service.db.queue import json_safe
    from workers.data import LoadPolicy
    from workers.recommend import plan_trajectories, recommend
    from workers.sweep import default_micro_batch_tokens, prepare
    from workers.trajectory import run_trajectory

    root = Path(tempfile.mkdtemp(prefix="sharpmix-truth-"))
    for split in ("general_train", "general_eval", "latex_train"):
        _plain_jsonl(data / f"{split}.jsonl.gz", root / f"{split}.jsonl", cfg.docs)
    retention = [DataRef(name="general_heldout", path=str(root / "general_eval.jsonl"))]
    if grid_docs is not None:
        _plain_jsonl(data / "general_eval.jsonl.gz", root / "grid_heldout.jsonl", grid_docs)
        retention.append(DataRef(name="grid_heldout", path=str(root / "grid_heldout.jsonl")))
    served = root / "model"
    shutil.copytree(model_dir, served)
    policy = LoadPolicy(allowed_roots=(root,), cache_dir=root / "cache", offline=True)
    out: dict[str, Any] = {"rates": {}, "root": str(root), "grid_docs": grid_docs}
    for lr in lrs:
        if time.perf_counter() > deadline:
            out["stopped_by_deadline"] = True
            break
        spec = SweepSpec(
            model=ModelRef(path=str(served)),
            pretraining=PretrainingRef(
                name="general",
                path=str(root / "general_train.jsonl"),
                within_tolerance=grid_docs is None,
            ),
            finetuning=[FinetuneRef(name="latex", path=str(root / "latex_train.jsonl"))],
            retention=retention,
            ratios=list(cfg.ratios),
            optimizer=AdamWSpec(betas=cfg.betas, eps=cfg.eps, weight_decay=0.0),
            learning_rate=lr,
            seq_len=cfg.seq_len,
            batch_tokens=cfg.batch_rows * cfg.seq_len,
            # The grid's 12 documents hold 40,881 tokens: three evaluation batches of 10 k.
            batches=cfg.sweep_batches if grid_docs is None else min(cfg.sweep_batches, 3),
            planned_steps=cfg.planned_steps,
            tolerance=cfg.tolerance,
            trajectory=TrajectorySpec(
                steps=cfg.trajectory_steps,
                measure_every=cfg.measure_every,
                **({"ratios": plan} if plan is not None else {}),
            ),
        )
        entry: dict[str, Any] = {"spec": spec.model_dump(mode="json")}
        sync(device)
        t0 = time.perf_counter()
        prepared = prepare(
            spec,
            policy,
            device=device.type,
            dtype=torch.float32,
            micro_batch_tokens=default_micro_batch_tokens(device.type),
        )
        sync(device)
        entry["prepare"] = {
            "seconds": time.perf_counter() - t0,
            "backwards": prepared.backwards,
            "forwards": prepared.setup_forwards,
        }
        rows: list[_Row] = []
        screen = []
        t0 = time.perf_counter()
        for ratio in cfg.ratios:
            measured = prepared.measure_ratio(Candidate(ratio))
            screen.append(_json_ready(measured))
            rows += [
                _Row(
                    ratio=ratio,
                    eval_set=m.eval_set,
                    role=m.role,
                    status=m.status,
                    eta_c=m.eta_c,
                    eta_c_low=m.eta_c_low,
                    spread=m.spread,
                    loss_change=m.loss_change,
                )
                for m in measured.measurements
            ]
        sync(device)
        entry["screen"] = screen
        entry["screen_seconds"] = time.perf_counter() - t0
        # The first-step verdict: the same rules on the same rows for a sweep without the
        # trajectory block (with it and no finished trajectory, the rules answer nothing).
        first_spec = spec.model_copy(update={"trajectory": None})
        entry["first_step"] = _json_ready(recommend(first_spec, rows))
        trajectories = []
        t0 = time.perf_counter()
        planned = plan_trajectories(spec, rows) if plan is not None else list(cfg.ratios)
        entry["planned_ratios"] = planned
        for ratio in planned:
            trajectories.append(run_trajectory(prepared, Candidate(ratio)))
            print(
                f"service lr {lr:g} ratio {ratio:g}: {trajectories[-1].steps_done} steps, "
                f"{trajectories[-1].seconds:.1f}s",
                flush=True,
            )
        sync(device)
        entry["trajectory_seconds"] = time.perf_counter() - t0
        entry["trajectories"] = _json_ready(trajectories)
        # What the worker writes of each finished trajectory task, and the rules read back.
        finished = [
            _TrajectoryRow(
                ratio=t.ratio,
                steps_done=t.steps_done,
                pruned=t.pruned,
                forecast=json_safe([vars(f) for f in t.forecast]),
            )
            for t in trajectories
        ]
        entry["trajectory"] = _json_ready(recommend(spec, rows, trajectories=finished))
        out["rates"][repr(lr)] = entry
        del prepared
        if on_rate is not None:
            on_rate(out)
    return out


def ablation_answers(
    cfg: TruthConfig,
    lrs: tuple[float, ...],
    model_dir: Path,
    data: Path,
    device: torch.device,
    *,
    deadline: float,
    grid_docs: int,
    on_rate: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The trajectories again with pruning off, to test the forecast itself.

    The worker's rule of run 4 pruned a mix after two measurements above the tolerance or with
    eta_c far below the rate; on this text it pruned every mix at step 20 (`service_answers`),
    before any forecast to N could be fitted. Here the same runner runs all K steps: the run
    spec's tolerance is the largest the spec allows (so the drift rule never fires) and
    `workers.trajectory.FAR_BELOW` is set to infinity for this process (so the eta_c rule of the
    runner of run 5 never fires; later runners do not prune on eta_c and ignore it). Nothing
    else changes: the forecasts are `run_trajectory`'s own, and `recommend` reads them with the
    real tolerance. A second retention set holds exactly the held-out documents
    whose first ``eval_rows`` sequences the grid measures, so forecast and ground truth are read
    on the same documents. As for trajectory tasks, ``prepare`` skips the direction gradients.
    """
    import workers.trajectory as runner
    from contract.mix import Candidate
    from contract.spec import (
        AdamWSpec,
        DataRef,
        FinetuneRef,
        ModelRef,
        PretrainingRef,
        SweepSpec,
        TrajectorySpec,
    )
    from service.db.queue import json_safe
    from workers.data import LoadPolicy
    from workers.recommend import recommend
    from workers.sweep import default_micro_batch_tokens, prepare

    runner.FAR_BELOW = float("inf")
    root = Path(tempfile.mkdtemp(prefix="sharpmix-ablation-"))
    for split in ("general_train", "general_eval", "latex_train"):
        _plain_jsonl(data / f"{split}.jsonl.gz", root / f"{split}.jsonl", cfg.docs)
    _plain_jsonl(data / "general_eval.jsonl.gz", root / "grid_heldout.jsonl", grid_docs)
    served = root / "model"
    shutil.copytree(model_dir, served)
    policy = LoadPolicy(allowed_roots=(root,), cache_dir=root / "cache", offline=True)
    out: dict[str, Any] = {"rates": {}, "grid_docs": grid_docs, "far_below": "inf"}
    for lr in lrs:
        if time.perf_counter() > deadline:
            out["stopped_by_deadline"] = True
            break
        spec = SweepSpec(
            model=ModelRef(path=str(served)),
            pretraining=PretrainingRef(name="general", path=str(root / "general_train.jsonl")),
            finetuning=[FinetuneRef(name="latex", path=str(root / "latex_train.jsonl"))],
            retention=[
                DataRef(name="general_heldout", path=str(root / "general_eval.jsonl")),
                DataRef(name="grid_heldout", path=str(root / "grid_heldout.jsonl")),
            ],
            ratios=list(cfg.ratios),
            optimizer=AdamWSpec(betas=cfg.betas, eps=cfg.eps, weight_decay=0.0),
            learning_rate=lr,
            seq_len=cfg.seq_len,
            batch_tokens=cfg.batch_rows * cfg.seq_len,
            batches=1,  # a trajectory measures on evaluation batch 0 only
            planned_steps=cfg.planned_steps,
            tolerance=10.0,  # the largest the spec allows: the drift rule never prunes
            trajectory=TrajectorySpec(
                steps=cfg.trajectory_steps, measure_every=cfg.ablation_measure_every
            ),
        )
        entry: dict[str, Any] = {"spec": spec.model_dump(mode="json")}
        t0 = time.perf_counter()
        prepared = prepare(
            spec,
            policy,
            device=device.type,
            dtype=torch.float32,
            micro_batch_tokens=default_micro_batch_tokens(device.type),
            gradients=False,
        )
        sync(device)
        entry["prepare"] = {
            "seconds": time.perf_counter() - t0,
            "backwards": prepared.backwards,
            "forwards": prepared.setup_forwards,
        }
        trajectories = []
        t0 = time.perf_counter()
        for ratio in cfg.ratios:
            if time.perf_counter() > deadline:
                entry["stopped_by_deadline"] = True
                break
            trajectories.append(runner.run_trajectory(prepared, Candidate(ratio)))
            print(
                f"ablation lr {lr:g} ratio {ratio:g}: {trajectories[-1].steps_done} steps, "
                f"{trajectories[-1].seconds:.1f}s",
                flush=True,
            )
            entry["trajectories"] = _json_ready(trajectories)
            if on_rate is not None:
                on_rate(out | {"rates": out["rates"] | {repr(lr): entry}})
        sync(device)
        entry["trajectory_seconds"] = time.perf_counter() - t0
        entry["trajectories"] = _json_ready(trajectories)
        finished = [
            _TrajectoryRow(
                ratio=t.ratio,
                steps_done=t.steps_done,
                pruned=t.pruned,
                forecast=json_safe([vars(f) for f in t.forecast]),
            )
            for t in trajectories
        ]
        real = spec.model_copy(update={"tolerance": cfg.tolerance})
        entry["trajectory"] = _json_ready(recommend(real, [], trajectories=finished))
        out["rates"][repr(lr)] = entry
        del prepared
        if on_rate is not None:
            on_rate(out)
    return out


@dataclass
class _Child:
    """A service process for some planned rates, writing its JSON and log to files."""

    lrs: tuple[float, ...]
    proc: subprocess.Popen[bytes]
    result: Path
    log: Path


def _start_children(
    args: argparse.Namespace,
    cfg: TruthConfig,
    model_dir: Path,
    seconds: float,
    procs: int,
    *,
    ablation_docs: int | None = None,
    service_docs: int | None = None,
) -> list[_Child]:
    """One process per share of the planned rates, started now, beside the grid.

    Small models leave the GPU waiting on kernel launches; the trajectories of several rates
    (and the grid) in separate processes fill each other's gaps.
    """
    folder = Path(tempfile.mkdtemp(prefix="sharpmix-service-"))
    shares = [cfg.lrs[i::procs] for i in range(min(procs, len(cfg.lrs)))]
    children = []
    for i, lrs in enumerate(shares):
        result, log = folder / f"service_{i}.json", folder / f"service_{i}.log"
        cmd = [
            sys.executable,
            "-m",
            "bench.science.trajectory_truth",
            "--service-only",
            "--data",
            str(args.data.resolve()),
            "--model-dir",
            str(model_dir),
            "--lrs",
            ",".join(repr(lr) for lr in lrs),
            "--out",
            str(result),
            "--budget",
            str(max(seconds - 15.0, 1.0)),
        ]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--grid-docs", str(ablation_docs)] if ablation_docs is not None else []
        cmd += ["--service-docs", str(service_docs)] if service_docs is not None else []
        cmd += ["--trajectories", str(args.trajectories)] if args.trajectories else []
        with log.open("wb") as handle:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        children.append(_Child(lrs, proc, result, log))
    return children


def _join_children(children: list[_Child], deadline: float) -> dict[str, Any]:
    """Wait for the service processes; merge their rates; keep their exit codes and logs."""
    merged: dict[str, Any] = {"rates": {}, "processes": []}
    for child in children:
        try:
            code = child.proc.wait(timeout=max(deadline - time.perf_counter(), 1.0))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            code = child.proc.wait()
        log = child.log.read_text(errors="replace")
        print(f"--- service process for {child.lrs} (exit {code}) ---\n{log[-6000:]}", flush=True)
        part = json.loads(child.result.read_text()) if child.result.is_file() else {}
        merged["rates"].update(part.get("rates", {}))
        merged["processes"].append(
            {"lrs": list(child.lrs), "exit": code, "partial": part.get("partial", False)}
        )
    return merged


def _service_child(args: argparse.Namespace, cfg: TruthConfig, start: float) -> None:
    """The ``--service-only`` process: the service part for ``--lrs``, JSON to ``--out``."""
    device = setup_torch(threads=2 if args.tiny else None)
    lrs = tuple(float(x) for x in args.lrs.split(","))
    out: Path = args.out
    save = lambda r: write_json(out, r | {"partial": True})  # noqa: E731
    if args.grid_docs is not None:
        result = ablation_answers(
            cfg,
            lrs,
            args.model_dir,
            args.data,
            device,
            deadline=start + args.budget,
            grid_docs=args.grid_docs,
            on_rate=save,
        )
    else:
        result = service_answers(
            cfg,
            lrs,
            args.model_dir,
            args.data,
            device,
            deadline=start + args.budget,
            grid_docs=args.service_docs,
            plan=args.trajectories,
            on_rate=save,
        )
    write_json(out, result)


def main() -> None:
    """Parse, run the parts under the time budget, write JSON as results arrive."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the .jsonl.gz files")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: $OUT, else /tmp/sharpmix-trajectory-tiny"
    )
    parser.add_argument("--tiny", action="store_true", help="CPU-debug sizes")
    parser.add_argument("--budget", type=float, default=540.0, help="wall seconds in all")
    parser.add_argument(
        "--parts",
        default="grid,service",
        help="after pre-training: grid, service and/or ablation (trajectories, pruning off)",
    )
    parser.add_argument(
        "--service-procs",
        type=int,
        default=None,
        help="processes for the service part, one planned rate each, running beside the grid "
        "(default: one per rate on a GPU, 0 = inline after the grid)",
    )
    parser.add_argument("--service-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lrs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--grid-docs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--service-docs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--held-out-guard",
        action="store_true",
        help="service part: guard held-out retention sets (the grid's documents among them) "
        "instead of the pre-training rows the model was trained on (run 6)",
    )
    parser.add_argument(
        "--trajectories",
        type=int,
        default=None,
        help="service part: trajectories only on the K ratios the worker's planner picks from "
        "the screen, as a 'ratios: auto' sweep does (run 8); default: every ratio",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    cfg = TruthConfig.tiny() if args.tiny else TruthConfig()
    if args.service_only:
        _service_child(args, cfg, start)
        return
    out = args.out or Path(os.environ.get("OUT", "/tmp/sharpmix-trajectory-tiny"))
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    device = setup_torch(threads=2 if args.tiny else None)
    run: dict[str, Any] = {
        "argv": sys.argv,
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "config": asdict(cfg),
        "parts": {},
    }
    manifest = args.data / "manifest.json"
    if manifest.is_file():
        run["corpora_manifest"] = json.loads(manifest.read_text())

    def part(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            result = fn()
            run["parts"][name] = {"seconds": time.perf_counter() - t0, "ok": True}
            return result
        except Exception as exc:
            traceback.print_exc()
            run["parts"][name] = {
                "seconds": time.perf_counter() - t0,
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
            return None
        finally:
            run["total_seconds"] = time.perf_counter() - start
            write_json(out / "run.json", run)

    print(f"device {run['device']}", flush=True)
    texts = part("corpora", lambda: load_corpora(args.data, cfg.docs))
    if texts is None:
        return
    tokenized = part("tokenize", lambda: tokenize(texts, cfg))
    if tokenized is None:
        return
    tokenizer, rows = tokenized
    run["tokens"] = {k: int(v.numel()) for k, v in rows.items()}
    run["vocab_size"] = len(tokenizer)
    print(f"tokens {run['tokens']}", flush=True)
    model_dir = Path(tempfile.mkdtemp(prefix="sharpmix-llama-")) / "model"
    pre = part("pretrain", lambda: pretrain(cfg, rows, tokenizer, device, model_dir))
    if pre is None:
        return
    write_json(out / "pretrain.json", pre)
    deadline = start + args.budget
    procs = args.service_procs
    if procs is None:
        procs = len(cfg.lrs) if device.type == "cuda" else 0
    children: list[_Child] = []
    service_docs = None
    if "service" in parts and args.held_out_guard:
        service_docs = grid_documents(texts["general_eval"], tokenizer, cfg.eval_rows * cfg.seq_len)
        run["service_grid_docs"] = service_docs
    if "service" in parts and procs > 0:
        children = _start_children(
            args, cfg, model_dir, deadline - time.perf_counter(), procs, service_docs=service_docs
        )
    if "grid" in parts:
        # Inline service work after the grid needs its share of the budget; children run beside.
        grid_deadline = deadline - (0.35 * args.budget if "service" in parts and not procs else 30)
        grid = part(
            "grid",
            lambda: run_grid(
                cfg,
                rows,
                model_dir,
                device,
                deadline=grid_deadline,
                on_group=lambda r: write_json(out / "grid.json", r | {"partial": True}),
            ),
        )
        if grid is not None:
            check = part("check_cell", lambda: check_cell(cfg, rows, model_dir, device))
            grid["check_cell"] = check
            write_json(out / "grid.json", grid)
    if "ablation" in parts:
        docs = grid_documents(texts["general_eval"], tokenizer, cfg.eval_rows * cfg.seq_len)
        run["ablation_grid_docs"] = docs
        kids = _start_children(
            args, cfg, model_dir, deadline - time.perf_counter(), len(cfg.lrs), ablation_docs=docs
        )
        ablation = part("ablation", lambda: _join_children(kids, deadline))
        if ablation is not None:
            write_json(out / "ablation.json", ablation)
    if "service" in parts and children:
        service = part("service", lambda: _join_children(children, deadline))
        if service is not None:
            write_json(out / "service.json", service)
    elif "service" in parts:
        service = part(
            "service",
            lambda: service_answers(
                cfg,
                cfg.lrs,
                model_dir,
                args.data,
                device,
                deadline=deadline,
                grid_docs=service_docs,
                plan=args.trajectories,
                on_rate=lambda r: write_json(out / "service.json", r | {"partial": True}),
            ),
        )
        if service is not None:
            write_json(out / "service.json", service)
    print(f"done in {time.perf_counter() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
