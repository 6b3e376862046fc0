"""The sweep a user asks for: a validated request, shared by the API (which checks it) and the
workers (which run it). Plain pydantic models, no web framework.

Ratio means the fraction of pre-training tokens in the mix: 0 is pure fine-tuning data, 1 is pure
pre-training data (see ../shared/method.md §3).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.config import Settings
from service.errors import InvalidRequestError

OFFLINE_MESSAGE = "this server is offline (SHARPMIX_OFFLINE=1); give a local 'path' instead"

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Ratio = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """A causal LM: a local directory (under the allowed roots) or a hub id with a revision."""

    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Local Hugging Face model directory (safetensors weights), absolute or "
        "relative to an allowed root (SHARPMIX_ALLOWED_ROOTS).",
        examples=["models/olmo2-1b"],
    )
    hub_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Hugging Face hub id, instead of 'path' (refused when the server is offline).",
        examples=["allenai/OLMo-2-0425-1B"],
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Hub revision (branch, tag or commit) to pin 'hub_id' to.",
    )
    optimizer_state: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Local safetensors file with AdamW moments, for the direction with state.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of 'path' (a local directory) or 'hub_id'")
        if self.revision is not None and self.hub_id is None:
            raise ValueError("'revision' goes with 'hub_id'; a local 'path' has no revision")
        return self


class DataRef(_Strict):
    """One data set: local file or directory (jsonl, json, parquet, csv, txt) or a hub data set."""

    name: Name = Field(
        description="Short unique name of the set; results and plots are labelled with it.",
        examples=["general"],
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Local jsonl, json, parquet, csv or txt file, or a directory of them, "
        "absolute or relative to an allowed root.",
        examples=["data/dclm-sample"],
    )
    hub_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Hugging Face data set id, instead of 'path'.",
    )
    config: str | None = Field(
        default=None, max_length=256, description="The hub data set's configuration name."
    )
    split: str = Field(
        default="train", min_length=1, max_length=64, description="The split to read."
    )
    text_field: str = Field(
        default="text",
        min_length=1,
        max_length=128,
        description="Column holding the text (prompt/completion and chat records are read too).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataRef:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of 'path' (a local file or directory) or 'hub_id'")
        return self


class FinetuneRef(DataRef):
    """A fine-tuning data set; several are mixed by their weights."""

    weight: PositiveFloat = Field(
        default=1.0, description="Share of this set among the fine-tuning sets (normalised)."
    )


class RatioRange(_Strict):
    """A continuous range of ratios searched by a model-based sampler."""

    low: Ratio = Field(description="Smallest pre-training ratio to try.")
    high: Ratio = Field(description="Largest pre-training ratio to try.")
    trials: int = Field(ge=2, le=10_000, description="How many ratios the sampler measures.")

    @model_validator(mode="after")
    def _ordered(self) -> RatioRange:
        if not self.low < self.high:
            raise ValueError("'low' must be below 'high'")
        return self


class AdamWSpec(_Strict):
    """AdamW as the fine-tuning run will use it (fresh state unless the model has one)."""

    name: Literal["adamw"] = Field(default="adamw", description="Selects AdamW.")
    betas: tuple[Beta, Beta] = Field(
        default=(0.9, 0.999),
        description="AdamW's (beta1, beta2), as the fine-tuning run sets them.",
    )
    eps: PositiveFloat = Field(default=1e-8, description="AdamW's epsilon.")
    weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Decoupled weight decay of the fine-tuning run."
    )


class SGDSpec(_Strict):
    """SGD (momentum buffers start empty, so the first step is the plain gradient)."""

    name: Literal["sgd"] = Field(default="sgd", description="Selects SGD.")
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = Field(
        default=0.0, description="SGD momentum (its buffer starts empty)."
    )
    weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Coupled weight decay, added to the gradient."
    )


Objective = Literal["flat_pretraining", "balanced", "pareto"]

# The request body shown in the API docs (/docs, /redoc): the demo's sweep, paths relative to
# SHARPMIX_HOME.
EXAMPLE: dict[str, Any] = {
    "model": {"path": "demo/model"},
    "pretraining": {"name": "general", "path": "demo/general.jsonl"},
    "finetuning": [{"name": "math", "path": "demo/math.jsonl"}],
    "ratios": [0.0, 0.05, 0.1, 0.2, 0.5, 1.0],
    "optimizer": {"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "learning_rate": 1.5e-4,
    "seq_len": 128,
    "batch_tokens": 16384,
    "batches": 3,
}


class SweepSpec(_Strict):
    """A mix sweep: which model, which data, which ratios, and how to measure."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [EXAMPLE]}
    )

    model: ModelRef = Field(description="The model to fine-tune, as it is before fine-tuning.")
    pretraining: DataRef = Field(
        description="Data like the model's pre-training data: the loss that must stay flat."
    )
    finetuning: list[FinetuneRef] = Field(
        min_length=1, description="The fine-tuning data; several sets are mixed by 'weight'."
    )
    retention: list[DataRef] = Field(
        default_factory=list,
        description="Further sets whose loss must stay flat too (e.g. general knowledge).",
    )
    targets: list[DataRef] = Field(
        default_factory=list,
        description="Further sets measured for information only (e.g. a benchmark's text).",
    )
    ratios: list[Ratio] | None = Field(
        default=None,
        min_length=1,
        description="Candidate pre-training ratios (fraction of pre-training tokens, 0 to 1); "
        "or give 'ratio_range'.",
        examples=[[0.0, 0.1, 0.2, 0.5, 1.0]],
    )
    ratio_range: RatioRange | None = Field(
        default=None, description="A range searched by Optuna's sampler, instead of 'ratios'."
    )
    optimizer: Annotated[AdamWSpec | SGDSpec, Field(discriminator="name")] = Field(
        default=AdamWSpec(), description="The fine-tuning run's optimizer; sets the direction."
    )
    learning_rate: PositiveFloat = Field(description="Planned (peak) fine-tuning learning rate.")
    seq_len: int = Field(default=256, ge=8, description="Tokens per sequence.")
    batch_tokens: int = Field(
        default=32768, ge=8, description="Tokens per direction batch and per evaluation batch."
    )
    batches: int = Field(default=4, ge=1, description="Batches per domain (B).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of batch draws.")
    objective: Objective = Field(
        default="flat_pretraining",
        description="Which rule answers: flat_pretraining (smallest ratio keeping the "
        "pre-training loss flat), balanced (where the per-set curves cross) or pareto.",
    )
    tol: float = Field(
        default=1 / 16,
        gt=0.0,
        le=0.5,
        allow_inf_nan=False,
        description="Relative precision of each critical-learning-rate search (1/16: 4 halvings).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if (self.ratios is None) == (self.ratio_range is None):
            raise ValueError("give exactly one of 'ratios' (a list) or 'ratio_range'")
        if self.ratios is not None and len(set(self.ratios)) != len(self.ratios):
            raise ValueError("'ratios' holds a value twice; list each candidate once")
        names = [ref.name for ref in self.eval_sets()]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"data set names must be unique; used twice: {', '.join(doubled)}")
        if self.batch_tokens % self.seq_len:
            raise ValueError(
                f"'batch_tokens' ({self.batch_tokens}) must be a multiple of 'seq_len' "
                f"({self.seq_len}): a batch is batch_tokens/seq_len whole sequences"
            )
        return self

    def eval_sets(self) -> list[DataRef]:
        """Every set whose loss is evaluated: pre-training, fine-tuning, retention, targets."""
        return [self.pretraining, *self.finetuning, *self.retention, *self.targets]

    def role(self, name: str) -> str:
        """The role of the evaluation set called ``name``."""
        if name == self.pretraining.name:
            return "pretraining"
        for role, refs in (
            ("finetuning", self.finetuning),
            ("retention", self.retention),
            ("target", self.targets),
        ):
            if any(ref.name == name for ref in refs):
                return role
        raise KeyError(name)

    @property
    def sequences_per_batch(self) -> int:
        """Sequences in one batch."""
        return self.batch_tokens // self.seq_len

    @property
    def slots(self) -> int:
        """Tasks the sweep is split into: one per candidate ratio, or one per trial of a range."""
        if self.ratios is not None:
            return len(self.ratios)
        assert self.ratio_range is not None
        return self.ratio_range.trials

    def canonical_json(self) -> str:
        """The spec as canonical JSON (sorted keys), the basis of idempotency."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """Fingerprint of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def check_limits(spec: SweepSpec, settings: Settings) -> None:
    """Refuse a sweep above the operator's limits, naming the field and the limit.

    Raises:
        InvalidRequestError: when a size is above its ``SHARPMIX_MAX_*`` limit.
    """
    checks: list[tuple[str, float, int, str]] = [
        ("batches", spec.batches, settings.max_batches, "SHARPMIX_MAX_BATCHES"),
        ("batch_tokens", spec.batch_tokens, settings.max_batch_tokens, "SHARPMIX_MAX_BATCH_TOKENS"),
        ("seq_len", spec.seq_len, settings.max_seq_len, "SHARPMIX_MAX_SEQ_LEN"),
        ("ratios", len(spec.ratios or []), settings.max_ratios, "SHARPMIX_MAX_RATIOS"),
        (
            "ratio_range.trials",
            spec.ratio_range.trials if spec.ratio_range else 0,
            settings.max_trials,
            "SHARPMIX_MAX_TRIALS",
        ),
        ("targets", len(spec.eval_sets()), settings.max_eval_sets, "SHARPMIX_MAX_EVAL_SETS"),
    ]
    for field, value, limit, variable in checks:
        if value > limit:
            raise InvalidRequestError(
                field, f"{value:g} is above this server's limit of {limit} (set by {variable})"
            )


def resolve_under_roots(path: str, roots: tuple[Path, ...], *, field: str) -> Path:
    """Resolve a user's path and make sure it stays inside one of the allowed roots.

    A relative path is looked up under each root in order and the first that exists wins (the
    worker's rule, ``workers.data.resolve_local_path``). ``..`` components are refused outright;
    symbolic links are followed before the containment check, so a link cannot lead outside.

    Raises:
        InvalidRequestError: when the path escapes every root or does not exist.
    """
    if "\x00" in path:
        raise InvalidRequestError(field, "the path contains a NUL byte")
    raw = Path(path)
    if ".." in raw.parts:
        raise InvalidRequestError(field, "'..' is not allowed; give the path inside a root")
    allowed = ", ".join(str(r) for r in roots)
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    for candidate in candidates:
        resolved = Path(os.path.realpath(candidate))
        inside = any(resolved == root or resolved.is_relative_to(root) for root in roots)
        if not inside and (raw.is_absolute() or candidate.exists() or candidate.is_symlink()):
            raise InvalidRequestError(
                field,
                f"{path!r} is outside the allowed roots ({allowed}); see SHARPMIX_ALLOWED_ROOTS",
            )
        if resolved.exists():
            return resolved
    raise InvalidRequestError(field, f"{path!r} does not exist under the allowed roots ({allowed})")


def check_paths(spec: SweepSpec, settings: Settings) -> None:
    """Check every local path of the spec against the allowed roots, and hub ids against offline
    mode.

    Raises:
        InvalidRequestError: naming the first field at fault.
    """
    roots = settings.roots
    refs: list[tuple[str, DataRef]] = [("pretraining", spec.pretraining)]
    for group in ("finetuning", "retention", "targets"):
        refs += [(f"{group}[{i}]", ref) for i, ref in enumerate(getattr(spec, group))]
    if spec.model.path is not None:
        resolve_under_roots(spec.model.path, roots, field="model.path")
    if spec.model.optimizer_state is not None:
        resolve_under_roots(spec.model.optimizer_state, roots, field="model.optimizer_state")
    if spec.model.hub_id is not None and settings.offline:
        raise InvalidRequestError("model.hub_id", OFFLINE_MESSAGE)
    for prefix, ref in refs:
        if ref.path is not None:
            resolve_under_roots(ref.path, roots, field=f"{prefix}.path")
        elif settings.offline:
            raise InvalidRequestError(f"{prefix}.hub_id", OFFLINE_MESSAGE)


def finite(value: float | None) -> float | None:
    """``value`` when finite, else None (JSON has no infinity)."""
    return value if value is not None and math.isfinite(value) else None


class RatioRank(BaseModel):
    """One candidate ratio, ranked by the predicted growth of the pre-training loss."""

    ratio: float
    pretraining_loss_change: float | None = Field(
        description="One-step change of the pre-training loss at the planned learning rate."
    )
    finetuning_loss_change: float | None = Field(
        description="One-step change of the (weighted) fine-tuning loss at the planned rate."
    )
    eta_c_pretraining_low: float | None = Field(
        description="Lower confidence bound of the critical learning rate on pre-training data."
    )
    min_eta_c: float | None = Field(description="Smallest critical learning rate over all sets.")
    in_basin: bool = Field(description="Planned rate below every retention set's lower bound.")


class Recommendation(BaseModel):
    """What a finished sweep recommends, with the evidence (../shared/method.md §4)."""

    objective: Objective
    ratio: float | None = Field(description="Recommended fraction of pre-training tokens.")
    reason: str
    learning_rate: float = Field(description="The planned learning rate the answer is for.")
    in_basin: bool | None = Field(
        description="Whether the planned rate stays below eta_c(ratio, pre-training) (its lower "
        "confidence bound): the first step leaves the pre-training loss flat."
    )
    max_stable_lr: float | None = Field(
        description="Largest stable learning rate for the recommended mix: min over sets of eta_c."
    )
    flat_ratio: float | None = Field(
        description="Smallest ratio whose lower bound of eta_c on every retention set exceeds "
        "the planned rate (None when no candidate does)."
    )
    balanced_ratio: float | None = Field(
        description="Ratio maximising the smallest eta_c over all evaluation sets."
    )
    least_forgetting_ratio: float | None = Field(
        description="Smallest ratio whose predicted one-step pre-training loss change at the "
        "planned rate is not above the noise, while the fine-tuning loss still falls (the "
        "loss-change rule; method.md §7 finds the eta_c rule safe but conservative)."
    )
    confidence: Literal["high", "medium", "low"]
    ranking: list[RatioRank] = Field(default_factory=list)
    pareto_ratios: list[float] = Field(
        default_factory=list,
        description="Ratios on the front of (fine-tuning loss decrease, pre-training loss rise).",
    )
    warnings: list[str] = Field(default_factory=list)
