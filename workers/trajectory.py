"""Trajectory tasks: real optimizer steps on one candidate mix, measured as they go (method.md §9).

The first-step measurements of `workers.sweep` look at theta0 only; on real text the basin is left
along the trajectory, not at theta0. So for one ratio ``r`` a trajectory:

1. takes ``min(K, N)`` optimizer steps (K = ``trajectory.steps``, N = ``planned_steps``) with the
   user's optimizer (fresh, or with the AdamW state the model came with) at the planned schedule's
   rate, on batches of ``batch_tokens`` tokens of which a share ``r`` is pre-training text (whole
   sequences; the count per step is chosen so the running share stays at ``r``);
2. at step 0, every ``measure_every`` steps and at the last step, for every evaluation set on its
   first held-out evaluation batch: the loss and its drift from step 0, eta_c along the optimizer's
   *current* update direction (its state included: the direction of the very step it is about to
   take), and the one-step loss change at the current rate;
3. stops early when the mix has clearly left the pre-training basin (`left_basin`).

The loss and its drift are the mean over the first ``LOSS_BATCHES`` held-out batches of the set (a
single batch's drift is too noisy for a tolerance of a few hundredths of a nat); eta_c and the
one-step loss change are measured on the first of them.

The model the worker keeps for the sweep is restored bit for bit afterwards (parameters and
buffers), so the same worker can go on with other tasks of the sweep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from contract.mix import Candidate
from contract.results import PointResult, Status
from contract.spec import AdamWSpec, SGDSpec, SweepSpec
from workers.curvature import direction_params, update_direction
from workers.curvature.distributed import (
    Ranks,
    measure_and_change,
    rank_rows,
    reshard,
    sharded_loss,
)
from workers.data import training_rows
from workers.forecast import Forecast, burn_in, forecast_drift
from workers.sweep import (
    PreparedSweep,
    check_optimizer_state,
    data_source,
    field_names,
    mix_weights,
)

RISING_OVER = 3  # measurements above the tolerance, not falling, before a mix is pruned
LOSS_BATCHES = 4  # held-out batches per set whose mean loss is the trajectory's loss


@dataclass
class Trajectory:
    """What one trajectory task measured."""

    ratio: float
    points: list[PointResult] = field(default_factory=list)
    steps_done: int = 0
    pruned: bool = False
    prune_reason: str | None = None
    forwards: int = 0
    backwards: int = 0
    seconds: float = 0.0
    forecast: list[Forecast] = field(default_factory=list)


def planned_measure_steps(spec: SweepSpec) -> list[int]:
    """The steps at which a trajectory measures: 0, every m, the last step, and N when N < K."""
    assert spec.trajectory is not None
    last = min(spec.trajectory.steps, spec.planned_steps)
    steps = set(range(0, last + 1, spec.trajectory.measure_every)) | {0, last}
    return sorted(steps)


def left_basin(spec: SweepSpec, history: Sequence[Sequence[PointResult]]) -> str | None:
    """Why the mix has clearly left the pre-training basin, or None while it has not.

    Clearly means: at the last three measurements after the first quarter of the trajectory (the
    forecast's burn-in), a guarded loss is above the tolerance, and its trend over every
    measurement after the burn-in (the least-squares slope of drift against step) is not
    downward. A trend over all those points, not the change between two of them: a loss that
    jumped and is coming back slowly wobbles by a few thousandths between measurements, and two
    endpoints that happen to tie must not prune it (run 7 in docs/evidence.md). On real text
    the loss of the pre-training text jumps within the first tens of steps and then, with enough
    pre-training data in the mix, comes back down (docs/evidence.md), so one or two measurements
    above the tolerance are not enough; and eta_c along the current update falls far below the
    current rate (to 0, an immediate rise) within ten steps even for mixes that end flat, so it
    is recorded but never prunes.
    """
    assert spec.trajectory is not None
    # The same burn-in as the forecast's: the early jump says little about step N.
    burn = burn_in(spec, spec.trajectory.steps)
    measured = [points for points in history if points and points[0].step > burn]
    if len(measured) < RISING_OVER:
        return None
    window = measured[-RISING_OVER:]
    for ref in spec.eval_sets():
        series = [next((p for p in points if p.eval_set == ref.name), None) for points in measured]
        if not spec.guarded(ref.name) or any(p is None for p in series):
            continue
        trend = [(p.step, p.drift) for p in series if p is not None]
        drifts = [drift for _, drift in trend[-RISING_OVER:]]
        if min(drifts) > spec.tolerance and _slope(trend) >= 0:
            return (
                f"the {ref.name} loss stayed above the tolerance {spec.tolerance:g} nats over "
                f"steps {window[0][0].step}-{window[-1][0].step} (to {drifts[-1]:+.3g}) and has "
                f"not trended down since step {trend[0][0]}"
            )
    return None


def _slope(points: Sequence[tuple[int, float]]) -> float:
    """Least-squares slope of ``y`` against ``x``."""
    n = len(points)
    mean_x = math.fsum(x for x, _ in points) / n
    mean_y = math.fsum(y for _, y in points) / n
    sxx = math.fsum((x - mean_x) ** 2 for x, _ in points)
    sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx if sxx > 0 else 0.0


def run_trajectory(
    prepared: PreparedSweep,
    candidate: Candidate,
    *,
    on_measure: Callable[[int, list[PointResult]], bool] | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> Trajectory:
    """Step on the candidate's mix and measure as it goes; the model is restored afterwards.

    Args:
        prepared: The worker's sweep (model, held-out batches, tokenizer and loading policy).
        candidate: The mix: its fraction of pre-training tokens in every batch, and a k-domain
            mix's weights when it has them.
        on_measure: Called with the step and its points after each measurement (to write them
            and report them to Optuna); returning False prunes the ratio there.
        checkpoint: Called before every step; it may raise to abort (lease lost, cancel).

    Returns:
        The trajectory, with its forecast to ``planned_steps``.
    """
    spec = prepared.spec
    if spec.trajectory is None:
        raise ValueError("the sweep has no 'trajectory' block")
    # A model sharded over several ranks (`prepare(..., ranks=)`): every rank calls this with the
    # same arguments, steps on its rows of each batch and gets the same trajectory.
    ranks = prepared.ranks
    check = checkpoint or (lambda: None)
    start = time.perf_counter()
    model = prepared.model
    device = next(model.parameters()).device
    autocast = _autocast(spec, device)
    streams = _Streams(prepared, candidate)
    measure_at = set(planned_measure_steps(spec))
    last = max(measure_at)
    result = Trajectory(ratio=candidate.ratio)
    history: list[list[PointResult]] = []
    loss_start: dict[str, float] = {}
    warm: dict[str, float] = {}
    with _restored(model):
        if ranks is None:  # a sharded model is float32 already: FSDP keeps the master weights
            model.float()  # float32 master weights, as mixed-precision training keeps them
        params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        optimizer = _optimizer(spec, model, params, prepared.optimizer_state)
        for step in range(last + 1):
            check()
            lr = spec.lr_at(step)
            measuring = step in measure_at
            if step == last and not measuring:
                break
            # The gradient of the batch about to be stepped on: it gives the direction that is
            # measured (state included) and then the step itself.
            if step < last:
                batch = streams.next_batch()
                model.train()
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    rows = batch if ranks is None else rank_rows(batch, ranks)
                    _backward(model, rows, prepared.micro_batch)
                result.backwards += 1
                result.forwards += 1
            if measuring:
                points = _measure(
                    prepared, optimizer, step, lr, step < last, loss_start, warm, ranks
                )
                result.forwards += sum(p.forwards for p in points)
                result.points += points
                history.append(points)
                reason = left_basin(spec, history)
                go_on = on_measure(step, points) if on_measure is not None else True
                if (reason is not None or not go_on) and step < last:
                    result.pruned = True
                    result.prune_reason = reason or "pruned by the study"
                    result.steps_done = step
                    break
            if step < last:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                result.steps_done = step + 1
        del optimizer
    model.zero_grad(set_to_none=True)
    result.forecast = forecast_drift(spec, result.points)
    result.seconds = time.perf_counter() - start
    return result


def _measure(
    prepared: PreparedSweep,
    optimizer: torch.optim.Optimizer,
    step: int,
    lr: float,
    has_gradient: bool,
    loss_start: dict[str, float],
    warm: dict[str, float],
    ranks: Ranks | None,
) -> list[PointResult]:
    spec = prepared.spec
    model = prepared.model
    points = []
    direction = update_direction(optimizer) if has_gradient else None
    params = direction_params(optimizer) if has_gradient else None
    for ref in spec.eval_sets():
        batches = prepared.eval_batches[ref.name]
        batch = batches[0]
        extra = batches[1:LOSS_BATCHES]
        if direction is None:
            # The last step of the run: no next update, only the loss.
            first = _plain_loss(prepared, batch, ranks)
            forwards, result, change = 1, None, None
        else:
            # On every rank's shards when the model is sharded, the loss all-reduced over ranks.
            result, delta = measure_and_change(
                model,
                prepared.loss_fn,
                direction,
                batch,
                ranks,
                lr_guess=warm.get(ref.name, max(lr, 1e-12)),
                tol=spec.tol,
                lr=lr,
                params=params,
            )
            first = result.loss0
            forwards, change = result.forwards + delta.forwards, delta.delta
        if result is not None and result.status == "ok":
            warm[ref.name] = result.eta
        losses = [first, *(_plain_loss(prepared, b, ranks) for b in extra)]
        forwards += len(extra)
        loss = math.fsum(losses) / len(losses)
        loss_start.setdefault(ref.name, loss)
        points.append(
            PointResult(
                step=step,
                lr=lr,
                eval_set=ref.name,
                role=spec.role(ref.name),
                status=Status.loss_only if result is None else Status(result.status),
                loss=loss,
                drift=loss - loss_start[ref.name],
                eta_c=_finite(result.eta) if result is not None else None,
                eta_c_low=_finite(result.lower) if result is not None else None,
                eta_c_high=_finite(result.upper) if result is not None else None,
                loss_change=change,
                forwards=forwards,
            )
        )
    return points


def _plain_loss(prepared: PreparedSweep, batch: Tensor, ranks: Ranks | None) -> float:
    """The loss of one batch in eval mode, on the precision path the searches use."""
    model = prepared.model
    if ranks is not None:
        return sharded_loss(model, prepared.loss_fn, batch, ranks)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(prepared.loss_fn(model, batch))
    finally:
        model.train(was)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _backward(model: nn.Module, batch: Tensor, micro_batch: int) -> None:
    """Mean next-token loss of the (S, T) batch, backpropagated in equal micro-batches."""
    total = len(batch)
    for chunk in torch.split(batch, micro_batch):
        loss = model(input_ids=chunk, labels=chunk).loss.float() * (len(chunk) / total)
        loss.backward()


def _autocast(spec: SweepSpec, device: torch.device) -> torch.autocast | nullcontext[None]:
    assert spec.trajectory is not None
    mode = spec.trajectory.precision
    if mode == "float32" or (mode == "auto" and device.type != "cuda"):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _optimizer(
    spec: SweepSpec, model: nn.Module, params: list[Tensor], state: dict[str, Tensor] | None
) -> torch.optim.Optimizer:
    """The user's optimizer over float32 parameters, with the state the model came with."""
    opt = spec.optimizer
    check_optimizer_state(spec, state)
    lr = spec.lr_at(0)
    optimizer: torch.optim.Optimizer
    if isinstance(opt, SGDSpec):
        optimizer = torch.optim.SGD(
            params,
            lr=lr,
            momentum=opt.momentum,
            dampening=opt.dampening,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
        )
    else:
        kind = torch.optim.AdamW if isinstance(opt, AdamWSpec) else torch.optim.Adam
        optimizer = kind(
            params,
            lr=lr,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            amsgrad=opt.amsgrad,
        )
    if state is None:
        return optimizer
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue

        def own(kind: str, name: str = name, p: Tensor = p) -> Tensor:
            return state[f"{kind}.{name}"].to(p.device, torch.float32).clone()

        if isinstance(opt, SGDSpec):
            optimizer.state[p] = {"momentum_buffer": own("momentum_buffer")}
            continue
        entry = {
            "step": torch.tensor(float(state["step"].item())),
            "exp_avg": own("exp_avg"),
            "exp_avg_sq": own("exp_avg_sq"),
        }
        if opt.amsgrad:
            entry["max_exp_avg_sq"] = own("max_exp_avg_sq")
        optimizer.state[p] = entry
    return optimizer


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Put every parameter and buffer back exactly (values and dtypes) when the block ends.

    A sharded (DTensor) parameter is copied back into its own storage, which FSDP all-gathers
    from; swapping its ``.data`` would cut it off from FSDP.
    """
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        yield
    finally:
        reshard(model)  # a sharded model registers its DTensors again (no-op otherwise)
        with torch.no_grad():
            for name, p in model.named_parameters():
                saved = params[name]
                if isinstance(p, DTensor) and isinstance(saved, DTensor):
                    p.to_local().copy_(saved.to_local())
                else:
                    p.data = saved
                p.grad = None
            for name, saved in buffers.items():
                owner, _, attr = name.rpartition(".")
                module = model.get_submodule(owner) if owner else model
                module._buffers[attr] = saved


class _Streams:
    """Mixed training batches at a candidate's weights, from rows no evaluation uses."""

    def __init__(self, prepared: PreparedSweep, candidate: Candidate) -> None:
        spec = prepared.spec
        if prepared.tokenizer is None or prepared.policy is None:
            raise ValueError("the prepared sweep has no tokenizer or loading policy")
        self.size = spec.sequences_per_batch
        self.device = next(prepared.model.parameters()).device
        self.weights = mix_weights(spec, candidate)
        refs = spec.direction_sets()
        groups = field_names(spec)
        # Rows 0 .. 2B*S-1 of each direction set's seeded order are its direction and
        # evaluation batches (workers.sweep.prepare); training starts after them.
        skip = 2 * spec.batches * self.size
        self.rows = [
            training_rows(
                data_source(ref),
                prepared.tokenizer,
                prepared.policy,
                seq_len=spec.seq_len,
                seed=spec.seed,
                skip_rows=skip,
                field=groups[ref.name],
            )
            if w > 0
            else None
            for ref, w in zip(refs, self.weights, strict=True)
        ]
        self.cursor = [0] * len(refs)
        self.owed = [0.0] * len(refs)

    def next_batch(self) -> Tensor:
        """The next (S, T) batch; per-domain counts keep the running token shares at the weights."""
        counts = _counts(self.weights, self.size, self.owed)
        parts = []
        for k, n in enumerate(counts):
            rows = self.rows[k]
            if n == 0 or rows is None:
                continue
            index = (torch.arange(n) + self.cursor[k]) % len(rows)  # wraps: another epoch
            parts.append(rows[index])
            self.cursor[k] += n
        return torch.cat(parts).to(self.device)


def _counts(weights: Sequence[float], size: int, owed: list[float]) -> list[int]:
    """Sequences per domain for one step of ``size``, carrying each domain's rounding forward.

    ``owed`` (updated in place) is what each domain is still owed from earlier steps, so over many
    steps every domain's share of the sequences tends to its weight, and each batch has ``size``.
    """
    for k, w in enumerate(weights):
        owed[k] += w * size
    counts = [max(math.floor(o), 0) for o in owed]
    order = sorted(range(len(weights)), key=lambda k: owed[k] - counts[k], reverse=True)
    for k in order[: max(size - sum(counts), 0)]:
        counts[k] += 1
    for k, n in enumerate(counts):
        owed[k] -= n
    return counts


__all__ = [
    "Trajectory",
    "left_basin",
    "planned_measure_steps",
    "run_trajectory",
]
