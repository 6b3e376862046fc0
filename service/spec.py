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
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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

    path: str | None = Field(default=None, min_length=1, max_length=4096)
    hub_id: str | None = Field(default=None, min_length=1, max_length=256)
    revision: str | None = Field(default=None, min_length=1, max_length=256)
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

    name: Name
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    hub_id: str | None = Field(default=None, min_length=1, max_length=256)
    config: str | None = Field(default=None, max_length=256)
    split: str = Field(default="train", min_length=1, max_length=64)
    text_field: str = Field(default="text", min_length=1, max_length=128)

    @model_validator(mode="after")
    def _one_source(self) -> DataRef:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of 'path' (a local file or directory) or 'hub_id'")
        return self


class FinetuneRef(DataRef):
    """A fine-tuning data set; several are mixed by their weights."""

    weight: PositiveFloat = 1.0


class RatioRange(_Strict):
    """A continuous range of ratios searched by a model-based sampler."""

    low: Ratio
    high: Ratio
    trials: int = Field(ge=2, le=10_000)

    @model_validator(mode="after")
    def _ordered(self) -> RatioRange:
        if not self.low < self.high:
            raise ValueError("'low' must be below 'high'")
        return self


class AdamWSpec(_Strict):
    """AdamW as the fine-tuning run will use it (fresh state unless the model has one)."""

    name: Literal["adamw"] = "adamw"
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


class SGDSpec(_Strict):
    """SGD (momentum buffers start empty, so the first step is the plain gradient)."""

    name: Literal["sgd"] = "sgd"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0
    weight_decay: NonNegativeFloat = 0.0


Objective = Literal["flat_pretraining", "balanced", "pareto"]


class SweepSpec(_Strict):
    """A mix sweep: which model, which data, which ratios, and how to measure."""

    model: ModelRef
    pretraining: DataRef
    finetuning: list[FinetuneRef] = Field(min_length=1)
    retention: list[DataRef] = Field(default_factory=list)
    targets: list[DataRef] = Field(default_factory=list)
    ratios: list[Ratio] | None = Field(default=None, min_length=1)
    ratio_range: RatioRange | None = None
    optimizer: Annotated[AdamWSpec | SGDSpec, Field(discriminator="name")] = AdamWSpec()
    learning_rate: PositiveFloat = Field(description="Planned (peak) fine-tuning learning rate.")
    seq_len: int = Field(default=256, ge=8)
    batch_tokens: int = Field(
        default=32768, ge=8, description="Tokens per direction batch and per evaluation batch."
    )
    batches: int = Field(default=4, ge=1, description="Batches per domain (B).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    objective: Objective = "flat_pretraining"
    tol: float = Field(default=1 / 16, gt=0.0, le=0.5, allow_inf_nan=False)
    notify_url: str | None = Field(
        default=None,
        min_length=8,
        max_length=2048,
        description="http(s) URL that gets a signed POST when the sweep reaches a final state "
        "(default: the tenant's, if the operator set one).",
    )

    @field_validator("notify_url")
    @classmethod
    def _notify_url_form(cls, value: str | None) -> str | None:
        if value is not None:
            check_url_form(value)
        return value

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


def check_url_form(url: str) -> None:
    """Refuse a notification URL that is not a plain ``http(s)://host[:port]/path``.

    Raises:
        ValueError: naming what to change (credentials, fragments and other schemes are refused).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"notify_url must start with https:// or http://, not {url[:16]!r}")
    if not parts.hostname:
        raise ValueError("notify_url has no host; give e.g. https://hooks.example.com/sharpmix")
    if parts.username is not None or parts.password is not None:
        raise ValueError("notify_url must not carry credentials; the POST is signed instead")
    if parts.fragment:
        raise ValueError("notify_url must not have a '#fragment'; it is never sent")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("notify_url contains whitespace or control characters")
    try:
        _ = parts.port  # raises on a port that is not a number in 0-65535
    except ValueError as exc:
        raise ValueError(f"notify_url has an invalid port: {exc}") from None


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
