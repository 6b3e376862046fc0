"""One sweep's measurements on a worker: load once, gradients once, then any number of ratios.

A worker that claims a task of a sweep builds a :class:`PreparedSweep` (model, tokenizer, batches,
the reference losses ``L_e(theta)`` and the per-domain gradients of every direction batch) and keeps
it while it claims further tasks of the same sweep, so a sweep costs ``K * B`` backward passes on
each worker however many ratios it measures (../shared/method.md §3).

Batches: for each of the B batches, the direction comes from batch ``b`` of the pre-training set
and of every fine-tuning set; evaluation uses *other* batches of every evaluation set (batches
``B..2B-1`` of the seeded order for the sets that also give directions), so no loss is measured on
the tokens that produced its direction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from contract.mix import Candidate, ratio_weights
from contract.results import BatchResult, MeasurementResult, Status
from contract.spec import AdamWSpec, DataRef, SGDSpec, SweepSpec
from workers.curvature import (
    AdamHyper,
    CriticalLR,
    CurvatureError,
    DirectionFn,
    DomainGradients,
    LossChange,
    Perturbation,
    SGDHyper,
    domain_gradients,
    eta_estimate,
    mixed_direction,
    state_transform,
    summarize,
)
from workers.curvature.distributed import (
    Ranks,
    measure_and_change,
    shard_model,
    sharded_domain_gradients,
    sharded_loss,
)
from workers.data import (
    DataError,
    DataSource,
    LoadPolicy,
    ModelSource,
    TokenStream,
    check_model_fits,
    load_model,
    micro_batched_loss,
    next_token_loss,
    token_batches,
    token_stream,
)
from workers.rates import changes_at, extra_rates, mean_by_rate


class TaskAbortedError(Exception):
    """The task stopped between batches: lease lost, sweep cancelled or worker shutting down."""


@dataclass
class BatchStep:
    """What one direction batch gave for one ratio, passed to the per-batch callback."""

    batch: int
    results: dict[str, CriticalLR]
    loss_changes: dict[str, float]


@dataclass
class RatioMeasurement:
    """All measurements of one ratio."""

    ratio: float
    measurements: list[MeasurementResult]
    forwards: int
    pruned: bool = False


@dataclass
class PreparedSweep:
    """Everything a worker keeps for one sweep between its tasks."""

    spec: SweepSpec
    model: nn.Module
    eval_batches: dict[str, Tensor]  # name -> (B, sequences, seq_len) token ids
    loss0: dict[str, list[float]]  # name -> L_e(theta) per evaluation batch
    gradients: list[DomainGradients]  # per direction batch: spec.direction_sets() in order
    transform: DirectionFn
    micro_batch: int
    backwards: int
    setup_forwards: int
    setup_seconds: float
    warm: dict[str, float] = field(default_factory=dict)  # last eta_c per set: warm starts
    # Last eta_c per (set, batch): the same batch's search of the neighbouring ratio is the
    # closer start (a set's batches disagree by up to 5x on real text, docs/evidence.md).
    warm_batch: dict[tuple[str, int], float] = field(default_factory=dict)
    # What a trajectory needs beside the model: the tokenizer and policy to read training rows.
    tokenizer: PreTrainedTokenizerBase | None = None
    policy: LoadPolicy | None = None
    optimizer_state: dict[str, Tensor] | None = None
    # Per direction set: {"tokens", "documents"} of its whole tokenised data (EOS included),
    # which exports need to turn token shares into per-example sampling weights.
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    # The ranks the model is sharded over (FSDP2), or None for one process.
    ranks: Ranks | None = None

    def loss_fn(self, model: nn.Module, batch: Tensor) -> Tensor:
        """Mean next-token loss of a (sequences, seq_len) batch, in micro-batches of equal size."""
        return micro_batched_loss(model, batch, self.micro_batch)

    def measure_ratio(
        self, candidate: Candidate, on_batch: Callable[[BatchStep], bool] | None = None
    ) -> RatioMeasurement:
        """Measure eta_c and the one-step loss change at the planned rate for one candidate.

        Args:
            candidate: The mix: its fraction of pre-training tokens, and the weights of a
                k-domain mix (``mixes``, ``mix_search``) when it has them.
            on_batch: Called after each direction batch; returning False prunes the ratio (the
                batches done so far are kept). It may raise :class:`TaskAbortedError`.

        Returns:
            One measurement per evaluation set.
        """
        spec = self.spec
        named = named_weights(spec, candidate)
        weights = [named[ref.name] for ref in spec.direction_sets()]
        names = [ref.name for ref in spec.eval_sets()]
        per_set: dict[str, list[CriticalLR]] = {name: [] for name in names}
        changes: dict[str, list[float]] = {name: [] for name in names}
        forwards = 0
        pruned = False
        # Issue 11, part 2: the loss change at each further rate of the grid, per set and batch.
        rates = extra_rates(spec.rate_grid, spec.learning_rate)
        at_rates: dict[str, list[list[float]]] = {name: [[] for _ in rates] for name in names}
        for b, grads in enumerate(self.gradients):
            direction = mixed_direction(grads, weights, self.transform)
            step = BatchStep(batch=b, results={}, loss_changes={})
            for name in names:
                batch = self.eval_batches[name][b]
                result, change = self._measure_one(direction, grads.params, batch, name, b)
                forwards += result.forwards + change.forwards
                if result.status == "ok":
                    self.warm[name] = self.warm_batch[(name, b)] = result.eta
                per_set[name].append(result)
                changes[name].append(change.delta)
                step.results[name] = result
                step.loss_changes[name] = change.delta
                if rates:
                    deltas, spent = changes_at(
                        self.model,
                        self.loss_fn,
                        direction,
                        batch,
                        self.ranks,
                        rates,
                        loss0=change.loss0,
                        params=grads.params,
                    )
                    forwards += spent
                    for per_rate, delta in zip(at_rates[name], deltas, strict=True):
                        per_rate.append(delta)
            del direction
            if on_batch is not None and not on_batch(step) and b + 1 < len(self.gradients):
                pruned = True
                break
        measurements = [
            _summary(spec, name, per_set[name], changes[name], self.loss0[name], pruned, named)
            for name in names
        ]
        if rates:
            measurements = [
                replace(
                    m,
                    rate_loss_changes=mean_by_rate(
                        spec.learning_rate, changes[m.eval_set], rates, at_rates[m.eval_set]
                    ),
                )
                for m in measurements
            ]
        return RatioMeasurement(candidate.ratio, measurements, forwards, pruned)

    def _measure_one(
        self, direction: list[Tensor], params: list[Tensor], batch: Tensor, name: str, b: int
    ) -> tuple[CriticalLR, LossChange]:
        """eta_c along ``direction`` on one evaluation batch, warm-started, and the one-step
        loss change at the planned rate; on the shards when the model is sharded."""
        spec, loss0 = self.spec, self.loss0[name][b]
        lr_guess = self.warm_batch.get((name, b), self.warm.get(name, spec.learning_rate))
        return measure_and_change(
            self.model,
            self.loss_fn,
            direction,
            batch,
            self.ranks,
            lr_guess=lr_guess,
            tol=spec.tol,
            lr=spec.learning_rate,
            loss0=loss0,
            params=params,
        )


def mix_weights(spec: SweepSpec, candidate: Candidate) -> list[float]:
    """Simplex weights over ``spec.direction_sets()`` for a candidate (a ratio or a mix)."""
    named = named_weights(spec, candidate)
    return [named[ref.name] for ref in spec.direction_sets()]


def named_weights(spec: SweepSpec, candidate: Candidate) -> dict[str, float]:
    """The mix's share per direction set: a k-domain mix's own, else the ratio form's."""
    if candidate.weights is not None:
        return dict(candidate.weights)
    return ratio_weights(spec, candidate.ratio)


def prepare(
    spec: SweepSpec,
    policy: LoadPolicy,
    *,
    device: str,
    dtype: torch.dtype,
    micro_batch_tokens: int = 8192,
    gradient_memory_fraction: float = 0.25,
    checkpoint: Callable[[], None] | None = None,
    gradients: bool = True,
    ranks: Ranks | None = None,
) -> PreparedSweep:
    """Load the model and data of a sweep and compute what every ratio shares.

    The K x B per-domain gradients are kept in float32 on the model's GPU when they take at most
    ``gradient_memory_fraction`` of its memory, else in CPU memory (an OLMo-2-1B sweep with two
    domains and four batches holds 47 GB of gradients): mixing then streams them in per ratio.

    Args:
        checkpoint: Called between the expensive steps (after loading, after each gradient
            batch); it may raise :class:`TaskAbortedError` to stop a set-up that is no longer
            wanted (shutdown, cancel, lost lease).
        gradients: False skips the per-domain gradients (a worker that only runs trajectories
            of this sweep needs the model and the evaluation batches alone).
        ranks: Shard the model with FSDP2 over these ranks (`workers.curvature.distributed`):
            every rank calls this with the same arguments, loads the float32 model on the CPU,
            shards it and moves its shards to ``device``; gradients, directions and searches
            then run on the shards. Saved optimizer state is not supported there yet.

    Raises:
        DataError: For anything the user must fix (paths, formats, sizes), before GPU work.
    """
    check = checkpoint or (lambda: None)
    start = time.perf_counter()
    loaded = load_model(
        ModelSource(
            path=spec.model.path,
            hub_id=spec.model.hub_id,
            revision=spec.model.revision,
            optimizer_state=spec.model.optimizer_state,
        ),
        policy,
        dtype=dtype,
        device=device if ranks is None else "cpu",
        seq_len=spec.seq_len,
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    if ranks is not None:
        _check_shardable(dtype, loaded.optimizer_state)
        # In place: the same module, its parameters now this rank's shards, moved to its GPU.
        module: nn.Module = shard_model(model, mesh=ranks.mesh(torch.device(device).type))
        module.to(device)  # through nn.Module, as load_model does: transformers wraps `.to`
    check_model_fits(model.config, tokenizer, seq_len=spec.seq_len)
    check()
    sequences = spec.sequences_per_batch
    direction_sets = spec.direction_sets()
    direction_names = {ref.name for ref in direction_sets}

    groups = field_names(spec)
    # Each set's token stream is read once (tokenised once per cache), then serves its direction
    # and evaluation batches and its counts for exports.
    streams: dict[str, TokenStream] = {}

    def batches(ref: DataRef, first: int) -> Tensor:
        src = data_source(ref)
        if ref.name not in streams:
            streams[ref.name] = token_stream(src, tokenizer, policy, field=groups[ref.name])
        return token_batches(
            src,
            tokenizer,
            policy,
            seq_len=spec.seq_len,
            batch_size=sequences,
            num_batches=spec.batches,
            seed=spec.seed,
            field=groups[ref.name],
            first_batch=first,
            stream=streams[ref.name],
        ).to(device)

    direction_batches = [batches(ref, 0) for ref in direction_sets]
    eval_batches = {
        ref.name: batches(ref, spec.batches if ref.name in direction_names else 0)
        for ref in spec.eval_sets()
    }
    sources = {
        ref.name: {"tokens": len(stream.tokens), "documents": stream.documents}
        for ref in direction_sets
        if (stream := streams[ref.name]).documents
    }
    micro_batch = max(1, min(sequences, micro_batch_tokens // spec.seq_len))
    check_optimizer_state(spec, loaded.optimizer_state)
    prepared = PreparedSweep(
        spec=spec,
        model=model,
        eval_batches=eval_batches,
        loss0={},
        gradients=[],
        transform=state_transform(optimizer_hyper(spec), model, loaded.optimizer_state),
        micro_batch=micro_batch,
        backwards=0,
        setup_forwards=0,
        setup_seconds=0.0,
        tokenizer=tokenizer,
        policy=policy,
        optimizer_state=loaded.optimizer_state,
        sources=sources,
        ranks=ranks,
    )
    # Gradients in train mode like the optimizer's own backward; stored in fp32 beside the model.
    model.train()
    storage = _gradient_device(model, len(direction_sets) * spec.batches, gradient_memory_fraction)
    for b in range(spec.batches if gradients else 0):
        if ranks is not None:  # local shards, beside the model's
            grads = sharded_domain_gradients(
                model,
                next_token_loss,
                [d[b] for d in direction_batches],
                ranks,
                micro_batch=micro_batch,
            )
        else:
            domains = [list(torch.split(d[b], micro_batch)) for d in direction_batches]
            grads = domain_gradients(
                model, next_token_loss, domains, dtype=torch.float32, device=storage
            )
        prepared.gradients.append(grads)
        prepared.backwards += grads.backward_passes
        check()
    model.train(False)
    model.zero_grad(set_to_none=True)
    if ranks is not None:
        # Float32 shards: the exact path at step 0 is the plain forward, so L(theta) is that.
        prepared.loss0 = {
            name: [sharded_loss(model, prepared.loss_fn, batch, ranks) for batch in tensor]
            for name, tensor in eval_batches.items()
        }
    else:
        params: list[Tensor] = (
            prepared.gradients[0].params
            if prepared.gradients
            else [p for p in model.parameters() if p.requires_grad]
        )
        prepared.loss0 = _reference_losses(prepared, params)
    prepared.setup_forwards += sum(len(t) for t in eval_batches.values())
    prepared.setup_seconds = time.perf_counter() - start
    return prepared


def _check_shardable(dtype: torch.dtype, state: dict[str, Tensor] | None) -> None:
    if dtype != torch.float32:
        raise CurvatureError(
            f"a sharded sweep runs float32 master weights, not {dtype}; set SHARPMIX_DTYPE=float32"
        )
    if state is not None:
        raise DataError(
            "model.optimizer_state",
            "a sweep sharded over several GPUs cannot use saved optimizer state yet; leave it "
            "out (a fresh optimizer) or use a model that fits one GPU",
        )


def _gradient_device(model: nn.Module, copies: int, fraction: float) -> torch.device:
    """Where ``copies`` float32 gradients of ``model`` are kept: its GPU if they fit, else CPU."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return device
    need = copies * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = torch.cuda.get_device_properties(device).total_memory
    return device if need <= fraction * total else torch.device("cpu")


def _reference_losses(prepared: PreparedSweep, params: list[Tensor]) -> dict[str, list[float]]:
    """``L_e(theta)`` of every evaluation batch, through the same precision path as the probes.

    ``measure`` runs a bf16 model's probes on the compensated path (float32 activations, hi/lo
    bf16 products; ``Perturbation`` at step 0 is ``theta`` on that path); a plain bf16 forward
    would differ from it by rounding noise larger than the loss changes being searched for, so
    ``L(theta)`` is taken the same way, once, for every ratio.
    """
    zeros = [torch.zeros_like(p) for p in params]
    losses: dict[str, list[float]] = {}
    with torch.no_grad(), Perturbation(prepared.model, params, zeros) as perturbation:
        perturbation.set_step(0.0)
        for name, tensor in prepared.eval_batches.items():
            losses[name] = [float(prepared.loss_fn(prepared.model, batch)) for batch in tensor]
    return losses


def check_optimizer_state(spec: SweepSpec, state: dict[str, Tensor] | None) -> None:
    """Refuse optimizer state the spec's optimizer cannot use, instead of ignoring any of it.

    Raises:
        DataError: SGD buffers for an Adam optimizer or the reverse, or amsgrad without (or
            with an unused) running maximum.
    """
    if state is None:
        return
    opt = spec.optimizer
    kinds = {key.split(".", 1)[0] for key in state if key != "step"}
    if isinstance(opt, SGDSpec):
        if "momentum_buffer" not in kinds:
            raise DataError(
                "model.optimizer_state",
                "the state holds Adam moments but 'optimizer.name' is sgd; give momentum_buffer."
                "<name> tensors, or set the optimizer the state comes from",
            )
        if opt.momentum == 0:
            raise DataError(
                "optimizer.momentum",
                "momentum buffers were given but 'momentum' is 0, so they would be ignored; set "
                "the momentum the run uses",
            )
        return
    if "momentum_buffer" in kinds:
        raise DataError(
            "model.optimizer_state",
            f"the state holds SGD momentum buffers but 'optimizer.name' is {opt.name}; set sgd, "
            "or give Adam moments",
        )
    if opt.amsgrad != ("max_exp_avg_sq" in kinds):
        need = "needs max_exp_avg_sq.<name>" if opt.amsgrad else "is off, so max_exp_avg_sq would"
        raise DataError(
            "optimizer.amsgrad",
            f"'amsgrad' {need}{' in the state' if opt.amsgrad else ' be ignored'}; match "
            "'amsgrad' to the run the state comes from",
        )


def optimizer_hyper(spec: SweepSpec) -> SGDHyper | AdamHyper:
    """The compute core's view of the spec's optimizer."""
    opt = spec.optimizer
    if isinstance(opt, SGDSpec):
        return SGDHyper(
            momentum=opt.momentum,
            dampening=opt.dampening,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
        )
    return AdamHyper(
        betas=opt.betas,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        amsgrad=opt.amsgrad,
        decoupled=isinstance(opt, AdamWSpec),
    )


def data_source(ref: DataRef) -> DataSource:
    """The data loader's view of a spec's data set."""
    return DataSource(
        name=ref.name,
        path=ref.path,
        hub_id=ref.hub_id,
        config=ref.config,
        split=ref.split,
        text_field=ref.text_field,
    )


def field_names(spec: SweepSpec) -> dict[str, str]:
    """Each data set's field in the spec (``finetuning[0]``), for error messages."""
    return spec.field_names()


def _summary(
    spec: SweepSpec,
    name: str,
    results: list[CriticalLR],
    changes: list[float],
    loss0: list[float],
    pruned: bool,
    weights: dict[str, float],
) -> MeasurementResult:
    stats = summarize(results, warn=False)
    point, low, high = eta_estimate(results, stats)
    return MeasurementResult(
        eval_set=name,
        role=spec.role(name),
        status=Status.of_batches((r.status for r in results), pruned=pruned),
        eta_c=point,
        eta_c_low=low,
        eta_c_high=high,
        sharpness=2.0 / point if point else None,
        spread=stats.ratio if math.isfinite(stats.ratio) else None,
        loss=sum(loss0[: len(results)]) / len(results),
        loss_change=sum(changes) / len(changes),
        forwards=sum(r.forwards for r in results) + len(changes),
        batches=len(results),
        per_batch=[
            BatchResult(
                eta_c=r.eta,
                lower=r.lower,
                upper=r.upper if math.isfinite(r.upper) else None,
                status=Status(r.status),
                forwards=r.forwards,
                loss0=loss0[b],
                loss_change=changes[b],
            )
            for b, r in enumerate(results)
        ],
        weights=weights,
    )


def default_micro_batch_tokens(device: str) -> int:
    """Tokens per forward/backward micro-batch: small on CPU, larger on a GPU."""
    return 4096 if device == "cpu" else 8192


__all__ = [
    "BatchStep",
    "PreparedSweep",
    "RatioMeasurement",
    "TaskAbortedError",
    "check_optimizer_state",
    "data_source",
    "default_micro_batch_tokens",
    "field_names",
    "mix_weights",
    "named_weights",
    "optimizer_hyper",
    "prepare",
]
