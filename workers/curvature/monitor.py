"""Critical sharpness inside a training loop: the paper's view of a user's own run.

Every `every` optimizer steps, `SharpnessMonitor` reads the direction the optimizer is about to
step along (its gradients *and* its state: Adam's moments, SGD's momentum; `direction`), and
measures on a fixed held-out batch of each evaluation set the critical learning rate along it:

    eta_c(e) = min { eta > 0 : L_e(theta - eta * d) > L_e(theta) },    lambda_c(e) = 2 / eta_c(e)

It reports `lambda_c` beside the two stability thresholds of method.md §5, `2 / lr` (gradient
descent's edge) and `(2 + 2 b1) / ((1 - b1) lr) - wd` (Adam's, for Adam/AdamW), so progressive
sharpening and the Edge of Stability show up in the run's own logs, and it watches the first
evaluation set (the pre-training data): the run has left the pre-training basin when the current
rate is above that set's critical rate (the next step raises its loss) or when its held-out loss
has risen by more than `tolerance` over the first measurement. Then a `BasinWarning` is issued.

Two ways in:

- `monitor.attach(optimizer)`: a PyTorch optimizer step pre-hook, for any training loop; the
  measurement runs right before `optimizer.step()` of every due step (gradients are final then,
  after any clipping your loop does before `step()`).
- `workers.integrations.SharpnessCallback` for `transformers.Trainer`, which calls `measure`
  from its `on_pre_optimizer_step` event and logs through the Trainer's loggers.

What a measurement costs: one forward for `L(theta)` and about 5-6 more for the search (warm
started from the last `eta_c`) per evaluation set, no backward pass; `bench/monitor_overhead.py`
measures it as a fraction of a training step. The parameters are restored bit for bit and the
gradients and optimizer state are not touched, so training continues exactly as without it.

Limits: whole parameters only (not FSDP/DeepSpeed shards). Loss scaling: `GradScaler.step`
unscales the gradients before it calls `optimizer.step()`, so the hook sees true gradients; a
`Trainer` in fp16 with gradient clipping off (``max_grad_norm=0``) reaches the callback with
still-scaled ones, so use bf16 there or keep clipping on.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workers.curvature.direction import update_direction
from workers.curvature.errors import CurvatureError
from workers.curvature.measure import measure
from workers.curvature.perturb import Precision
from workers.curvature.search import Status

__all__ = [
    "BasinWarning",
    "MonitorReport",
    "SharpnessMonitor",
    "SharpnessReading",
    "adam_edge",
    "causal_lm_loss",
    "direction",
    "torch_optimizer",
]

LossFn = Callable[[nn.Module, Any], Tensor]
SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
# Where the first search starts when the rate gives no hint (0 in a warm-up); the exponential
# phase brackets eta_c from any start, at one forward per factor of 2.
FIRST_GUESS = 1e-4


class BasinWarning(UserWarning):
    """The run has left the pre-training loss's basin (see `SharpnessMonitor`)."""


@dataclass(frozen=True)
class SharpnessReading:
    """One evaluation set at one measurement.

    Attributes:
        eval_set: The set's name (the key in ``eval_batches``).
        loss: Its held-out loss `L(theta)` before the step.
        drift: ``loss`` minus its loss at the first measurement.
        eta_c: Critical learning rate along the update direction (0 when the loss rises at once,
            a lower bound when ``status`` is ``no_increase``).
        lambda_c: ``2 / eta_c`` (inf when the loss rises at once).
        status: The search's status (``ok``, ``increases_immediately``, ``no_increase``).
        forwards: Forward passes this set's measurement spent.
    """

    eval_set: str
    loss: float
    drift: float
    eta_c: float
    lambda_c: float
    status: Status
    forwards: int


@dataclass(frozen=True)
class MonitorReport:
    """Everything one measurement found.

    Attributes:
        step: The optimizer step whose direction was measured (1-based: the step about to run).
        lr: The learning rate of that step (of the first parameter group).
        two_over_lr: ``2 / lr``, gradient descent's stability edge (inf at a rate of 0).
        adam_edge: ``(2 + 2 b1) / ((1 - b1) lr) - wd`` for Adam/AdamW, else None.
        readings: One per evaluation set, in ``eval_batches`` order (pre-training first).
        out_of_basin: Whether the first set's loss has left its basin (see ``reasons``).
        reasons: Why, in words; empty when in the basin.
        seconds: Wall time of the measurement.
        forwards: Forward passes it spent in all.
    """

    step: int
    lr: float
    two_over_lr: float
    adam_edge: float | None
    readings: list[SharpnessReading]
    out_of_basin: bool
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0

    def metrics(self, prefix: str = "sharpness/") -> dict[str, float]:
        """Flat, finite numbers for a logger: ``sharpness/<set>/lambda_c`` and friends."""
        values: dict[str, float | None] = {
            f"{prefix}lr": self.lr,
            f"{prefix}two_over_lr": self.two_over_lr,
            f"{prefix}adam_edge": self.adam_edge,
            f"{prefix}out_of_basin": float(self.out_of_basin),
            f"{prefix}forwards": float(self.forwards),
            f"{prefix}seconds": self.seconds,
        }
        for r in self.readings:
            for name in ("lambda_c", "eta_c", "loss", "drift"):
                values[f"{prefix}{r.eval_set}/{name}"] = float(getattr(r, name))
        return {k: v for k, v in values.items() if v is not None and math.isfinite(v)}


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a wrapper (accelerate's ``AcceleratedOptimizer``, itself a
    ``torch.optim.Optimizer`` subclass, keeps the real one in ``.optimizer``)."""
    for _ in range(8):
        if type(optimizer) in SUPPORTED:
            return cast(torch.optim.Optimizer, optimizer)
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            break
        optimizer = inner
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer  # update_direction names what it cannot reproduce
    raise CurvatureError(
        f"{type(optimizer).__name__} is not a torch.optim optimizer (nor wraps one in "
        "'.optimizer'); sharpness monitoring needs torch.optim.SGD, Adam or AdamW"
    )


def direction(optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], list[Tensor], float]:
    """The step the optimizer is about to take, as parameters, `d` and one rate `lr`.

    Parameter groups may run at different rates (a scheduler per group, a smaller rate for the
    embeddings); each group's direction is scaled by its rate over the first group's, so that
    `theta - lr * d` is the whole step. At a rate of 0 (the first step of a linear warm-up) the
    step is empty and `d` is the optimizer's direction unscaled, still worth measuring.

    Returns:
        The parameters with a gradient, their directions (float32), and the first group's rate.
    """
    d = update_direction(optimizer)
    rates = [float(group["lr"]) for group in optimizer.param_groups]
    if not all(math.isfinite(r) and r >= 0 for r in rates):
        raise CurvatureError(f"the optimizer's learning rates are {rates}; they must be >= 0")
    lr = rates[0]
    params: list[Tensor] = []
    scales: list[float] = []
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        with_grad = [p for p in group["params"] if p.grad is not None]
        params += with_grad
        scales += [rate / lr if lr > 0 else 1.0] * len(with_grad)
    if len(params) != len(d):
        raise CurvatureError("update_direction and the parameter groups disagree; report a bug")
    scaled = [di if s == 1.0 else di * s for di, s in zip(d, scales, strict=True)]
    return params, scaled, lr


def adam_edge(optimizer: torch.optim.Optimizer, lr: float) -> float | None:
    """Adam's stability threshold `(2 + 2 b1) / ((1 - b1) lr) - wd` (method.md §5), or None."""
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) or lr <= 0:
        return None
    group = optimizer.param_groups[0]
    b1 = float(group["betas"][0])
    return (2 + 2 * b1) / ((1 - b1) * lr) - float(group["weight_decay"])


def causal_lm_loss(model: nn.Module, batch: Any) -> Tensor:
    """Mean token loss of a Hugging Face causal LM on a batch.

    ``batch`` is a tensor of token ids (B, T), or a mapping with ``input_ids`` (and optionally
    ``attention_mask`` and ``labels``; labels default to the input ids).
    """
    if isinstance(batch, Tensor):
        inputs: dict[str, Any] = {"input_ids": batch, "labels": batch}
    elif isinstance(batch, Mapping):
        inputs = dict(batch)
        inputs.setdefault("labels", inputs["input_ids"])
    else:
        raise CurvatureError(
            "an evaluation batch is a tensor of token ids or a dict with 'input_ids'; "
            f"got {type(batch).__name__} (pass loss_fn= for other batches)"
        )
    output = model(**inputs)
    loss = output["loss"] if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, Tensor):
        raise CurvatureError("the model returned no 'loss'; pass loss_fn= for this model")
    return loss


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class SharpnessMonitor:
    """Measures lambda_c along the optimizer's update direction every `every` steps.

    Args:
        model: The model being trained.
        eval_batches: Held-out batches by set name, the pre-training set first; each is measured
            on every time, always the same tokens (so losses compare across steps).
        loss_fn: ``loss_fn(model, batch) -> scalar``; default `causal_lm_loss`.
        every: Measure at step 1 (the baseline) and at every multiple of this.
        tolerance: Largest acceptable rise of the first set's held-out loss, in nats.
        tol: Relative bracket width of the search (method.md §2).
        precision: Perturbation precision (see `workers.curvature.perturb`).
        warn: Issue a `BasinWarning` when the run leaves the basin.
    """

    def __init__(
        self,
        model: nn.Module,
        eval_batches: Mapping[str, Any],
        *,
        loss_fn: LossFn | None = None,
        every: int = 50,
        tolerance: float = 0.02,
        tol: float = 1 / 16,
        precision: Precision = "auto",
        warn: bool = True,
    ) -> None:
        if not eval_batches:
            raise CurvatureError("give at least one evaluation batch (the pre-training set first)")
        if every < 1:
            raise CurvatureError(f"every must be a positive number of steps, got {every}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise CurvatureError(f"tolerance must be a number of nats >= 0, got {tolerance}")
        self.model = model
        self.eval_batches = dict(eval_batches)
        self.loss_fn: LossFn = loss_fn or causal_lm_loss
        self.every = every
        self.tolerance = tolerance
        self.tol = tol
        self.precision: Precision = precision
        self.warn = warn
        self.history: list[MonitorReport] = []
        self._first_loss: dict[str, float] = {}
        self._last_eta: dict[str, float] = {}
        self._steps = 0
        self._moved: tuple[torch.device, dict[str, Any]] | None = None

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based) is measured."""
        return step == 1 or step % self.every == 0

    def _batches(self) -> dict[str, Any]:
        device = next(self.model.parameters()).device
        if self._moved is None or self._moved[0] != device:
            self._moved = (device, {k: _to_device(b, device) for k, b in self.eval_batches.items()})
        return self._moved[1]

    def measure(self, optimizer: Any, step: int) -> MonitorReport:
        """Measure now, along the step ``optimizer`` is about to take; call before ``step()``.

        Args:
            optimizer: A torch SGD/Adam/AdamW (or a wrapper holding one in ``.optimizer``) whose
                gradients are set.
            step: The number of the step about to run (1-based), for the report.

        Returns:
            The report, also appended to ``history``.
        """
        started = time.perf_counter()
        opt = torch_optimizer(optimizer)
        params, d, lr = direction(opt)
        if not params:
            raise CurvatureError("no parameter has a gradient; call measure after backward()")
        readings: list[SharpnessReading] = []
        for name, batch in self._batches().items():
            result = measure(
                self.model,
                self.loss_fn,
                d,
                batch,
                lr_guess=self._last_eta.get(name, lr if lr > 0 else FIRST_GUESS),
                tol=self.tol,
                params=params,
                precision=self.precision,
            )
            if result.eta > 0 and math.isfinite(result.eta):
                self._last_eta[name] = result.eta
            first = self._first_loss.setdefault(name, result.loss0)
            readings.append(
                SharpnessReading(
                    eval_set=name,
                    loss=result.loss0,
                    drift=result.loss0 - first,
                    eta_c=result.eta,
                    lambda_c=result.sharpness,
                    status=result.status,
                    forwards=result.forwards,
                )
            )
        reasons = self._basin(readings[0], lr)
        report = MonitorReport(
            step=step,
            lr=lr,
            two_over_lr=2.0 / lr if lr > 0 else math.inf,
            adam_edge=adam_edge(opt, lr),
            readings=readings,
            out_of_basin=bool(reasons),
            reasons=reasons,
            seconds=time.perf_counter() - started,
            forwards=sum(r.forwards for r in readings),
        )
        self.history.append(report)
        if reasons and self.warn:
            warnings.warn(
                f"step {step}: the {readings[0].eval_set!r} loss has left its basin: "
                + "; ".join(reasons),
                BasinWarning,
                stacklevel=2,
            )
        return report

    def _basin(self, first: SharpnessReading, lr: float) -> list[str]:
        reasons = []
        if first.status == "increases_immediately":
            reasons.append("the update direction raises it at any step size")
        elif first.status in ("ok", "no_increase") and first.eta_c < lr:
            reasons.append(
                f"its critical rate {first.eta_c:.3g} is below the current rate {lr:.3g} "
                "(lower the rate or mix in more of this data)"
            )
        if first.drift > self.tolerance:
            reasons.append(
                f"its held-out loss rose by {first.drift:.4f} nats since the first measurement, "
                f"above the tolerance {self.tolerance:g}"
            )
        return reasons

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Measure from inside ``optimizer.step()``, before it updates (for any training loop).

        Returns:
            The hook's handle; ``handle.remove()`` stops monitoring.
        """

        def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self._steps += 1
            if self.due(self._steps):
                self.measure(opt, self._steps)

        return torch_optimizer(optimizer).register_step_pre_hook(before_step)
