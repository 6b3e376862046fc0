"""The sweep a user asks for: a validated request, shared by the API (which checks it) and the
workers (which run it). Plain pydantic models, no web framework.

Ratio means the fraction of pre-training tokens in the mix: 0 is pure fine-tuning data, 1 is pure
pre-training data (see ../shared/method.md §3).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from contract.errors import LimitError
from contract.mix import (
    MixBounds,
    MixSearch,
    MixWeights,
    PretrainingMix,
    check_mix_spec,
    omit_unset,
)
from contract.rates import LearningRateRange, check_rate_list, with_planned

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Ratio = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]


class Role(enum.StrEnum):
    """What an evaluation set is in the sweep; a plain string on the wire and in the database."""

    pretraining = "pretraining"
    finetuning = "finetuning"
    retention = "retention"
    target = "target"


# The roles whose loss must stay flat: the answer is judged on them.
RETENTION_ROLES = (Role.pretraining, Role.retention)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The one-of rule of `path` and `hub_id`, stated in the schema too (the validators enforce it):
# exactly one of them is a string, the other absent or null.
_PATH_OR_HUB_ID: JsonDict = {
    "oneOf": [
        {
            "required": ["path"],
            "properties": {"path": {"type": "string"}, "hub_id": {"type": "null"}},
        },
        {
            "required": ["hub_id"],
            "properties": {"hub_id": {"type": "string"}, "path": {"type": "null"}},
        },
    ]
}


class ModelRef(_Strict):
    """A causal LM: a local directory (under the allowed roots) or a hub id with a revision."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_PATH_OR_HUB_ID)

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

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_PATH_OR_HUB_ID)

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


class PretrainingRef(DataRef, PretrainingMix):
    """The pre-training (reference) set: the replay data of a mix, and a loss to keep flat; one
    of several sources when ``pretraining`` is a list (``weight``, ``min``, ``max``, ``share``
    come from ``contract.mix``)."""

    within_tolerance: bool = Field(
        default=True,
        description="Whether this set's drift must stay within the tolerance. Set false when "
        "the model was trained on these very documents: their drift also counts lost "
        "memorisation, several times the drift of unseen text of the same kind; then give a "
        "held-out sample as a retention set, which is always guarded.",
    )


class FinetuneRef(DataRef, MixBounds):
    """A fine-tuning data set; several are mixed by their weights (bounds from ``contract.mix``
    for ``mixes`` and ``mix_search``)."""

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
    """AdamW (decoupled weight decay) as the fine-tuning run will use it; fresh state unless the
    model comes with one (``model.optimizer_state``)."""

    name: Literal["adamw"] = Field(default="adamw", description="Selects AdamW.")
    betas: tuple[Beta, Beta] = Field(
        default=(0.9, 0.999),
        description="AdamW's (beta1, beta2), as the fine-tuning run sets them.",
    )
    eps: PositiveFloat = Field(default=1e-8, description="AdamW's epsilon.")
    weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Decoupled weight decay of the fine-tuning run."
    )
    amsgrad: bool = Field(
        default=False,
        description="Use the running maximum of the second moment (with a given state, it must "
        "hold max_exp_avg_sq.<name>).",
    )


class AdamSpec(_Strict):
    """Adam with coupled (L2) weight decay, added to the gradient before the moments."""

    name: Literal["adam"] = Field(default="adam", description="Selects Adam.")
    betas: tuple[Beta, Beta] = Field(
        default=(0.9, 0.999), description="Adam's (beta1, beta2), as the fine-tuning run sets them."
    )
    eps: PositiveFloat = Field(default=1e-8, description="Adam's epsilon.")
    weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Coupled (L2) weight decay, added to the gradient."
    )
    amsgrad: bool = Field(
        default=False, description="Use the running maximum of the second moment."
    )


class SGDSpec(_Strict):
    """SGD with optional momentum; buffers start empty unless the model comes with them
    (``model.optimizer_state`` holding ``momentum_buffer.<name>``)."""

    name: Literal["sgd"] = Field(default="sgd", description="Selects SGD.")
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = Field(
        default=0.0, description="SGD momentum (its buffer starts empty)."
    )
    dampening: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = Field(
        default=0.0, description="Scales each new gradient by 1 - dampening (not the first)."
    )
    nesterov: bool = Field(
        default=False, description="Nesterov momentum (needs momentum > 0 and dampening 0)."
    )
    weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Coupled weight decay, added to the gradient."
    )

    @model_validator(mode="after")
    def _nesterov(self) -> SGDSpec:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("'nesterov' needs 'momentum' above 0 and 'dampening' 0 (as torch)")
        return self


OptimizerSpec = Annotated[AdamWSpec | AdamSpec | SGDSpec, Field(discriminator="name")]


Objective = Literal["flat_pretraining", "balanced", "pareto"]

# The quick screen's candidates when a trajectory sweep is asked to choose its own (`ratios: auto`).
AUTO_SCREEN_RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
DEFAULT_TOLERANCE = 0.02  # nats: about 7x the seed noise of a held-out loss seen on real text


class ScheduleSpec(_Strict):
    """The learning-rate schedule of the planned run; its peak is the sweep's `learning_rate`."""

    kind: Literal["constant", "cosine", "linear"] = Field(
        default="constant",
        description="constant, or after the warm-up a cosine or linear decay to "
        "min_lr_ratio x peak at planned_steps.",
    )
    warmup_steps: int = Field(
        default=0, ge=0, le=10_000_000, description="Linear warm-up from 0 to the peak."
    )
    min_lr_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Final rate of a decay, as a fraction of the peak.",
    )

    def lr_at(self, step: int, *, peak: float, total: int) -> float:
        """The rate of step ``step`` (0-based) of a ``total``-step run peaking at ``peak``."""
        if step < self.warmup_steps:
            return peak * (step + 1) / (self.warmup_steps + 1)
        if self.kind == "constant":
            return peak
        span = max(total - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        floor = self.min_lr_ratio
        if self.kind == "linear":
            return peak * (floor + (1.0 - floor) * (1.0 - progress))
        return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class TrajectorySpec(_Strict):
    """Real optimizer steps on each candidate mix, measured as they go (method.md §9)."""

    steps: int = Field(
        ge=1, le=1_000_000, description="K: optimizer steps taken on each candidate mix."
    )
    measure_every: int = Field(
        ge=1,
        le=1_000_000,
        description="m: every m steps (and at step 0 and K) the held-out loss, eta_c along the "
        "optimizer's current update direction and the one-step loss change of every evaluation "
        "set are recorded.",
    )
    ratios: int = Field(
        default=4,
        ge=1,
        le=16,
        description="With ratios 'auto': how many ratios of the quick screen get a trajectory, "
        "chosen around its boundary.",
    )
    precision: Literal["auto", "float32", "bf16_autocast"] = Field(
        default="auto",
        description="How the steps are computed: bf16 autocast over float32 master weights "
        "(auto on a GPU), or float32 throughout (auto on a CPU).",
    )
    accept: Literal["forecast", "interval"] = Field(
        default="forecast",
        description="Which forecast must stay within the tolerance for a ratio to be "
        "recommended: 'forecast', the point forecast of every guarded set's drift at N (the "
        "best estimate; a warning says when its interval reaches past the tolerance), or "
        "'interval', the upper end of each forecast's interval (the cautious answer: fewer "
        "ratios pass, so it tends to more pre-training data than needed).",
    )

    @model_validator(mode="after")
    def _every(self) -> TrajectorySpec:
        if self.measure_every > self.steps:
            raise ValueError(
                f"'measure_every' ({self.measure_every}) is above 'steps' ({self.steps}); "
                "measure at most every K steps"
            )
        return self


def _pretraining_kind(value: object) -> str:
    return "list" if isinstance(value, list) else "one"


def _ratios_kind(value: object) -> str:
    # One error, at the place that is wrong, instead of one per form a union could take.
    return "auto" if isinstance(value, str) else "list"


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
    pretraining: Annotated[
        Annotated[PretrainingRef, Tag("one")]
        | Annotated[Annotated[list[PretrainingRef], Field(min_length=1)], Tag("list")],
        Discriminator(_pretraining_kind),
    ] = Field(
        description="Data like the model's pre-training data: the replay data of a mix, and a "
        "loss that must stay flat. A list gives several sources (k-domain mixes): with 'ratios' "
        "they split the pre-training share by 'weight'."
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
    ratios: (
        Annotated[
            Annotated[list[Ratio], Tag("list")] | Annotated[Literal["auto"], Tag("auto")],
            Discriminator(_ratios_kind),
        ]
        | None
    ) = Field(
        default=None,
        min_length=1,
        description="Candidate pre-training ratios (fraction of pre-training tokens, 0 to 1), "
        "or 'auto' (with a trajectory: a quick first-step screen picks where the trajectories "
        "run); or give 'ratio_range'.",
        examples=[[0.0, 0.1, 0.2, 0.5, 1.0], "auto"],
    )
    ratio_range: RatioRange | None = Field(
        default=None, description="A range searched by Optuna's sampler, instead of 'ratios'."
    )
    optimizer: OptimizerSpec = Field(
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
    planned_steps: int = Field(
        default=1000, ge=1, le=1_000_000, description="N: optimizer steps of the planned run."
    )
    schedule: ScheduleSpec = Field(
        default_factory=ScheduleSpec, description="The planned run's learning-rate schedule."
    )
    tolerance: float = Field(
        default=DEFAULT_TOLERANCE,
        gt=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="Largest acceptable rise (nats) of the pre-training and every retention "
        "loss over the planned run.",
    )
    trajectory: TrajectorySpec | None = Field(
        default=None,
        description="Step on each mix and watch the losses and critical sharpness (recommended: "
        "steps 100-300, measure_every 10-25); without it the answer is a first-step verdict.",
    )
    # --- k-domain mixes (contract/mix.py): candidates on the simplex over every pre-training
    # source and fine-tuning set, instead of 'ratios' or 'ratio_range'.
    mixes: list[MixWeights] | None = Field(
        default=None,
        min_length=1,
        description="Candidate mixes, each a mapping from pre-training source and fine-tuning set "
        "names to their share of the whole mix (summing to 1; an omitted set gets 0); instead "
        "of 'ratios'.",
        examples=[[{"general": 0.2, "code": 0.1, "math": 0.7}]],
    )
    mix_search: MixSearch | None = Field(
        default=None,
        description="Search mixes over the simplex with Optuna within each set's 'min', 'max' "
        "or 'share' (sets without bounds keep their relative 'weight'); instead of 'ratios'.",
    )
    # --- end of k-domain mixes
    notify_url: str | None = Field(
        default=None,
        min_length=8,
        max_length=2048,
        description="http(s) URL that gets a signed POST when the sweep reaches a final state "
        "(default: the tenant's, if the operator set one).",
    )

    # --- Issue 11, parts 2 and 5: a grid of learning rates, and a warm start. Absent (None) they
    # change nothing, and the canonical JSON leaves them out (see `canonical_json`). ---
    learning_rates: list[PositiveFloat] | None = Field(
        default=None,
        min_length=1,
        description="Further learning rates to answer for beside 'learning_rate', strictly "
        "ascending; the planned rate is added when it is not listed. The recommendation's "
        "'rate_region' then gives, per ratio, the largest rate that stays within the tolerance "
        "and the stable region over (ratio, rate). eta_c is measured once per ratio; each rate "
        "costs one extra forward per evaluation batch. Trajectories run at the planned rate only.",
        examples=[[3e-5, 1e-4, 3e-4]],
    )
    learning_rate_range: LearningRateRange | None = Field(
        default=None,
        description="A log-spaced grid of rates instead of 'learning_rates' (the planned rate "
        "is added to it when it is not a grid point).",
    )
    warm_start_from: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="Id of an earlier sweep of yours: its measured ratios seed this sweep's "
        "Optuna study, and its eta_c values (per evaluation set of the same name) are the first "
        "guesses of this sweep's searches. Refused (422) when it is not a sweep of yours.",
    )

    @field_validator("learning_rates")
    @classmethod
    def _rates_ascending(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            check_rate_list(value)
        return value

    @property
    def rate_grid(self) -> list[float] | None:
        """The rates answered for, ascending with the planned rate; None without a grid."""
        if self.learning_rates is not None:
            return with_planned(list(self.learning_rates), self.learning_rate)
        if self.learning_rate_range is not None:
            return with_planned(self.learning_rate_range.grid(), self.learning_rate)
        return None

    # --- end of issue 11 parts 2 and 5 ---

    @field_validator("notify_url")
    @classmethod
    def _notify_url_form(cls, value: str | None) -> str | None:
        if value is not None:
            check_url_form(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        forms = (self.ratios, self.ratio_range, self.mixes, self.mix_search)
        if sum(form is not None for form in forms) != 1:
            raise ValueError(
                "give exactly one of 'ratios' (a list) or 'ratio_range' (or, for k-domain "
                "mixes, 'mixes' or 'mix_search')"
            )
        if self.learning_rates is not None and self.learning_rate_range is not None:
            raise ValueError("give at most one of 'learning_rates' or 'learning_rate_range'")
        if self.mixes is not None or self.mix_search is not None:
            # The rate grid and the warm start work on ratios; a mix is more than its ratio.
            extra = [
                name
                for name, value in (
                    ("learning_rates", self.learning_rates),
                    ("learning_rate_range", self.learning_rate_range),
                    ("warm_start_from", self.warm_start_from),
                )
                if value is not None
            ]
            if extra:
                raise ValueError(
                    f"{' and '.join(repr(n) for n in extra)} work with 'ratios' or "
                    "'ratio_range' only, not with 'mixes' or 'mix_search': leave them out, "
                    "or sweep ratios (several pre-training sources split by their 'weight')"
                )
        if self.ratios == "auto" and self.trajectory is None:
            raise ValueError(
                "'ratios: auto' lets a first-step screen choose where trajectories run; "
                "add 'trajectory' (steps, measure_every) or list the ratios"
            )
        if self.trajectory is not None and self.ratio_range is not None:
            raise ValueError(
                "'trajectory' runs on listed ratios: give 'ratios' (a list, or 'auto') instead "
                "of 'ratio_range'"
            )
        if not any(ref.within_tolerance for ref in self.pretraining_sets) and not self.retention:
            raise ValueError(
                "'pretraining.within_tolerance' is false and there is no retention set: nothing "
                "would be kept within the tolerance; add a held-out sample as a retention set"
            )
        if self.schedule.warmup_steps >= self.planned_steps:
            raise ValueError(
                f"'schedule.warmup_steps' ({self.schedule.warmup_steps}) must be below "
                f"'planned_steps' ({self.planned_steps})"
            )
        if isinstance(self.ratios, list) and len(set(self.ratios)) != len(self.ratios):
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
        check_mix_spec(self)
        return self

    @property
    def pretraining_sets(self) -> list[PretrainingRef]:
        """The pre-training sources, one or several."""
        return self.pretraining if isinstance(self.pretraining, list) else [self.pretraining]

    def field_names(self) -> dict[str, str]:
        """Each data set's field in the spec (``finetuning[0]``), for error messages."""
        listed = isinstance(self.pretraining, list)
        names = {
            ref.name: f"pretraining[{i}]" if listed else "pretraining"
            for i, ref in enumerate(self.pretraining_sets)
        }
        for group in ("finetuning", "retention", "targets"):
            for i, ref in enumerate(getattr(self, group)):
                names[ref.name] = f"{group}[{i}]"
        return names

    def direction_sets(self) -> list[PretrainingRef | FinetuneRef]:
        """The sets whose gradients make a mix: pre-training sources, then fine-tuning sets."""
        return [*self.pretraining_sets, *self.finetuning]

    def eval_sets(self) -> list[DataRef]:
        """Every set whose loss is evaluated: pre-training, fine-tuning, retention, targets."""
        return [*self.pretraining_sets, *self.finetuning, *self.retention, *self.targets]

    def guarded(self, name: str) -> bool:
        """Whether the drift of the set called ``name`` must stay within the tolerance."""
        if name not in {ref.name for ref in self.eval_sets()}:
            return False
        role = self.role(name)
        return role is Role.retention or any(
            ref.name == name and ref.within_tolerance for ref in self.pretraining_sets
        )

    def role(self, name: str) -> Role:
        """The role of the evaluation set called ``name``.

        Raises:
            KeyError: when no evaluation set has that name.
        """
        if any(ref.name == name for ref in self.pretraining_sets):
            return Role.pretraining
        groups: tuple[tuple[Role, list[FinetuneRef] | list[DataRef]], ...] = (
            (Role.finetuning, self.finetuning),
            (Role.retention, self.retention),
            (Role.target, self.targets),
        )
        for role, refs in groups:
            if any(ref.name == name for ref in refs):
                return role
        raise KeyError(name)

    @property
    def sequences_per_batch(self) -> int:
        """Sequences in one batch."""
        return self.batch_tokens // self.seq_len

    @property
    def screen_ratios(self) -> list[float]:
        """The ratios of the first-step measurements: the list, or the auto screen's grid."""
        if self.ratios == "auto":
            return list(AUTO_SCREEN_RATIOS)
        return list(self.ratios or [])

    @property
    def slots(self) -> int:
        """Measurement tasks: one per candidate ratio or mix, or one per trial of a search."""
        if self.ratios is not None:
            return len(self.screen_ratios)
        if self.mixes is not None:
            return len(self.mixes)
        if self.mix_search is not None:
            return self.mix_search.trials
        assert self.ratio_range is not None
        return self.ratio_range.trials

    @property
    def trajectory_slots(self) -> int:
        """Trajectory tasks the sweep will run (for 'auto' they are created after the screen)."""
        if self.trajectory is None:
            return 0
        if self.ratios == "auto":
            return min(self.trajectory.ratios, len(AUTO_SCREEN_RATIOS))
        if self.mixes is not None:
            return len(self.mixes)
        return len(self.screen_ratios)

    def lr_at(self, step: int) -> float:
        """The planned run's learning rate at optimizer step ``step`` (0-based)."""
        return self.schedule.lr_at(step, peak=self.learning_rate, total=self.planned_steps)

    def canonical_json(self) -> str:
        """The spec as canonical JSON (sorted keys), the basis of idempotency.

        Fields added later are left out while absent, so a spec written before them keeps its
        fingerprint (a retried submission still matches the sweep it made).
        """
        data = omit_unset(self.model_dump(mode="json"))
        for key in _LATER_FIELDS:
            if data.get(key) is None:
                data.pop(key, None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """Fingerprint of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


# Optional fields added after specs were first stored: left out of the canonical JSON when None.
_LATER_FIELDS = ("learning_rates", "learning_rate_range", "warm_start_from")


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


@dataclass(frozen=True)
class Limits:
    """The operator's largest sizes of a sweep, and the setting that raises each one."""

    max_batches: int
    max_batch_tokens: int
    max_seq_len: int
    max_ratios: int
    max_trajectory_steps: int
    max_trials: int
    max_eval_sets: int
    max_learning_rates: int = 32


def check_limits(spec: SweepSpec, limits: Limits) -> None:
    """Refuse a sweep above the operator's limits, naming the field and the limit.

    Raises:
        LimitError: when a size is above its ``SHARPMIX_MAX_*`` limit.
    """
    checks: list[tuple[str, float, int, str]] = [
        ("batches", spec.batches, limits.max_batches, "SHARPMIX_MAX_BATCHES"),
        ("batch_tokens", spec.batch_tokens, limits.max_batch_tokens, "SHARPMIX_MAX_BATCH_TOKENS"),
        ("seq_len", spec.seq_len, limits.max_seq_len, "SHARPMIX_MAX_SEQ_LEN"),
        ("ratios", len(spec.screen_ratios), limits.max_ratios, "SHARPMIX_MAX_RATIOS"),
        (
            "trajectory.steps",
            spec.trajectory.steps if spec.trajectory else 0,
            limits.max_trajectory_steps,
            "SHARPMIX_MAX_TRAJECTORY_STEPS",
        ),
        (
            "ratio_range.trials",
            spec.ratio_range.trials if spec.ratio_range else 0,
            limits.max_trials,
            "SHARPMIX_MAX_TRIALS",
        ),
        ("targets", len(spec.eval_sets()), limits.max_eval_sets, "SHARPMIX_MAX_EVAL_SETS"),
        (
            "learning_rate_range.points" if spec.learning_rate_range else "learning_rates",
            len(spec.rate_grid or []),
            limits.max_learning_rates,
            "SHARPMIX_MAX_LEARNING_RATES",
        ),
        ("mixes", len(spec.mixes or ()), limits.max_ratios, "SHARPMIX_MAX_RATIOS"),
        (
            "mix_search.trials",
            spec.mix_search.trials if spec.mix_search else 0,
            limits.max_trials,
            "SHARPMIX_MAX_TRIALS",
        ),
    ]
    for field, value, limit, variable in checks:
        if value > limit:
            raise LimitError(
                field, f"{value:g} is above this server's limit of {limit} (set by {variable})"
            )
