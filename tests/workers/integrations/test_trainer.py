"""SharpnessCallback in a real transformers Trainer run on CPU (a tiny Llama, a few steps)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from tests.workers.curvature.test_monitor import domain, tiny_llama
from workers.curvature import BasinWarning
from workers.integrations import SharpnessCallback

pytest.importorskip("accelerate")  # Trainer needs it: pip install 'sharpmix[trainer]'

pytestmark = pytest.mark.slow


class Rows(Dataset[dict[str, Tensor]]):
    """Token rows as the Trainer's causal-LM examples."""

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


class Recorder(TrainerCallback):
    """Stands in for a reporting integration (TensorBoard, MLflow, ...): keeps what on_log got."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.logs.append(dict(logs or {}))


def make_trainer(tmp_path: Path, steps: int, lr: float, **args: Any) -> tuple[Trainer, Recorder]:
    recorder = Recorder()
    trainer = Trainer(
        model=tiny_llama(seed=7),
        args=TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=steps,
            per_device_train_batch_size=8,
            learning_rate=lr,
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
            **args,
        ),
        train_dataset=Rows(domain(32, 96, seed=1)),
        callbacks=[recorder],
    )
    return trainer, recorder


def test_the_callback_logs_lambda_c_with_both_edges_to_the_loggers(tmp_path: Path) -> None:
    held_out = {"pretraining": domain(0, 16, seed=2), "math": domain(32, 16, seed=3)}
    trainer, recorder = make_trainer(
        tmp_path, steps=6, lr=1e-3, weight_decay=0.01, warmup_steps=2, lr_scheduler_type="linear"
    )
    callback = SharpnessCallback(held_out, every=2).attach(trainer)
    with pytest.warns(BasinWarning):  # fine-tuning on 'math' alone raises the other loss at once
        trainer.train()

    measured = [e for e in trainer.state.log_history if "sharpness/lr" in e]
    assert [e["step"] for e in measured] == [1, 2, 4, 6]
    reported = [e for e in recorder.logs if "sharpness/lr" in e]
    assert len(reported) == 4  # a logger placed before the callback sees every measurement
    # Linear warm-up: step 1 runs at rate 0 (no edge to draw), step 2 at half the peak.
    assert measured[0]["sharpness/lr"] == 0.0
    assert "sharpness/two_over_lr" not in measured[0]
    assert measured[1]["sharpness/lr"] == pytest.approx(5e-4)
    for entry, report in zip(measured, callback.monitor.history, strict=True):
        lr = report.lr
        assert entry["sharpness/lr"] == lr
        assert entry["sharpness/math/loss"] == report.readings[1].loss
        assert math.isfinite(entry["sharpness/math/lambda_c"])
        if lr > 0:
            b1, wd = trainer.args.adam_beta1, trainer.args.weight_decay
            assert entry["sharpness/two_over_lr"] == pytest.approx(2 / lr)
            edge = (2 + 2 * b1) / ((1 - b1) * lr) - wd
            assert entry["sharpness/adam_edge"] == pytest.approx(edge)
    # Training the math set lowers its held-out loss.
    assert measured[-1]["sharpness/math/drift"] < 0
    assert all(e["sharpness/out_of_basin"] == 1.0 for e in measured[1:])


def test_training_is_unchanged_by_the_callback(tmp_path: Path) -> None:
    finals = []
    for watched in (False, True):
        trainer, _ = make_trainer(tmp_path / str(watched), steps=4, lr=1e-3)
        if watched:
            SharpnessCallback({"pretraining": domain(0, 16, seed=2)}, every=1).attach(trainer)
        with pytest.warns(BasinWarning) if watched else contextlib.nullcontext():
            trainer.train()  # both runs seed the same (TrainingArguments.seed)
        finals.append([p.detach().clone() for p in trainer.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals, strict=True))


def test_without_attach_the_measurement_joins_the_trainers_next_log(tmp_path: Path) -> None:
    trainer, _ = make_trainer(tmp_path, steps=2, lr=1e-5)
    trainer.args.logging_steps = 2
    trainer.add_callback(SharpnessCallback({"math": domain(32, 16, seed=3)}, every=2))
    trainer.train()
    (entry,) = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
    assert entry["step"] == 2
    assert "sharpness/math/lambda_c" not in entry  # log_history is written before callbacks run
    callback = next(
        c for c in trainer.callback_handler.callbacks if isinstance(c, SharpnessCallback)
    )
    assert [r.step for r in callback.monitor.history] == [1, 2]
    assert callback.monitor.history[-1].out_of_basin is False
