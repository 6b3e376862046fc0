"""`SharpnessCallback`: critical sharpness in a Hugging Face `Trainer` run.

    from workers.integrations import SharpnessCallback

    trainer = Trainer(model=model, args=args, train_dataset=train)
    SharpnessCallback({"pretraining": pt_batch, "math": math_batch}, every=50).attach(trainer)
    trainer.train()

Every `every` optimizer steps (and at the first, the baseline) it measures, right before
`optimizer.step()` (after the Trainer's gradient clipping), lambda_c along the step the optimizer
is about to take on each held-out batch, and logs ``sharpness/<set>/lambda_c``, ``.../eta_c``,
``.../loss``, ``.../drift``, ``sharpness/two_over_lr``, ``sharpness/adam_edge`` and
``sharpness/out_of_basin`` through `Trainer.log`: to every logger the run reports to (TensorBoard,
MLflow, W&B, ...) and to ``trainer.state.log_history``. When the pre-training set (the first batch)
leaves its basin it issues a `BasinWarning` and logs a warning. Without `attach` (passed in
``Trainer(callbacks=[...])``) it still measures and keeps ``monitor.history``, and adds the last
readings to the Trainer's next log entry (where only callbacks after it see them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from workers.curvature.monitor import LossFn, MonitorReport, SharpnessMonitor
from workers.curvature.perturb import Precision

__all__ = ["SharpnessCallback"]

log = logging.getLogger("sharpmix.sharpness")


class SharpnessCallback(TrainerCallback):
    """Measure and log lambda_c every `every` steps of a `Trainer` run.

    Args:
        eval_batches: Held-out batches by name, the pre-training set first: token id tensors
            (B, T) or dicts with ``input_ids`` (see `causal_lm_loss`).
        every: Measure at step 1 and every multiple of this.
        tolerance: Largest acceptable rise of the pre-training held-out loss, in nats.
        loss_fn: ``loss_fn(model, batch) -> scalar``; default: the model's own ``loss``.
        tol: Relative bracket width of the search.
        precision: Perturbation precision (``"auto"``: exact for fp32, fp32 copies for bf16).
        prefix: Prefix of the logged keys.
    """

    def __init__(
        self,
        eval_batches: Mapping[str, Any],
        *,
        every: int = 50,
        tolerance: float = 0.02,
        loss_fn: LossFn | None = None,
        tol: float = 1 / 16,
        precision: Precision = "auto",
        prefix: str = "sharpness/",
    ) -> None:
        self._eval_batches = eval_batches
        self._every = every
        self._tolerance = tolerance
        self._loss_fn = loss_fn
        self._tol = tol
        self._precision: Precision = precision
        # Checks the arguments now, with a placeholder model; the real one comes at train time.
        self.monitor = self._monitor(nn.Identity())
        self.prefix = prefix
        self._trainer: Trainer | None = None
        self._pending: MonitorReport | None = None

    def _monitor(self, model: nn.Module) -> SharpnessMonitor:
        return SharpnessMonitor(
            model,
            self._eval_batches,
            loss_fn=self._loss_fn,
            every=self._every,
            tolerance=self._tolerance,
            tol=self._tol,
            precision=self._precision,
        )

    def attach(self, trainer: Trainer) -> SharpnessCallback:
        """Add this callback to ``trainer`` and log through its loggers; returns ``self``."""
        self._trainer = trainer
        trainer.add_callback(self)
        return self

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Bind the monitor to the model being trained (the Trainer may have wrapped or moved
        it since the callback was made)."""
        if model is None:
            return
        history = self.monitor.history
        self.monitor = self._monitor(model)
        self.monitor.history = history

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Measure along the step about to run, when it is due."""
        step = state.global_step + 1
        if optimizer is None or not self.monitor.due(step):
            return
        report = self.monitor.measure(optimizer, step)
        if report.out_of_basin:
            log.warning(
                "step %d: out of the pre-training basin: %s", step, "; ".join(report.reasons)
            )
        self._pending = report

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Log the step's measurement through the Trainer, at the step it belongs to."""
        if self._pending is not None and self._trainer is not None:
            report, self._pending = self._pending, None
            self._trainer.log(report.metrics(self.prefix))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Without `attach`: put the last measurement into the Trainer's next log entry."""
        if self._trainer is None and self._pending is not None and logs is not None:
            logs.update(self._pending.metrics(self.prefix))
            self._pending = None
