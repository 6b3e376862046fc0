"""The sweep a user asks for: a validated request, shared by the API (which checks it) and the
workers (which run it). Plain pydantic models, no web framework.

Ratio means the fraction of pre-training tokens in the mix: 0 is pure fine-tuning data, 1 is pure
pre-training data (see ../shared/method.md §3).

:class:`SweepSpec` is built from parts with homes of their own, re-exported here so
``from contract.spec import ...`` reads every name of a request: the model and data sets
(``contract.refs``), the optimizer (``contract.optimizers``), the planned run and its trajectories
(``contract.plan``), k-domain mixes (``contract.mix``), the rate grid (``contract.rates``), the
bounded numbers (``contract.quantities``) and the operator's limits (``contract.limits``).
"""

from __future__ import annotations

import hashlib
import json
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

from contract.limits import Limits, check_limits
from contract.mix import MixSearch, MixWeights, check_mix_spec, omit_unset
from contract.optimizers import AdamSpec, AdamWSpec, OptimizerSpec, SGDSpec
from contract.plan import ScheduleSpec, TrajectorySpec
from contract.quantities import Beta, NonNegativeFloat, PositiveFloat, Ratio
from contract.rates import LearningRateRange, check_rate_list, with_planned
from contract.refs import (
    RETENTION_ROLES,
    DataRef,
    FinetuneRef,
    ModelRef,
    Name,
    PretrainingRef,
    Role,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


Objective = Literal["flat_pretraining", "balanced", "pareto"]

# The quick screen's candidates when a trajectory sweep is asked to choose its own (`ratios: auto`).
AUTO_SCREEN_RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
DEFAULT_TOLERANCE = 0.02  # nats: about 7x the seed noise of a held-out loss seen on real text


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


# Defined here: SweepSpec, RatioRange, Objective, check_url_form and the constants; the rest
# re-exported from their homes (see the imports above).
__all__ = [
    "AUTO_SCREEN_RATIOS",
    "DEFAULT_TOLERANCE",
    "EXAMPLE",
    "RETENTION_ROLES",
    "AdamSpec",
    "AdamWSpec",
    "Beta",
    "DataRef",
    "FinetuneRef",
    "Limits",
    "ModelRef",
    "Name",
    "NonNegativeFloat",
    "Objective",
    "OptimizerSpec",
    "PositiveFloat",
    "PretrainingRef",
    "Ratio",
    "RatioRange",
    "Role",
    "SGDSpec",
    "ScheduleSpec",
    "SweepSpec",
    "TrajectorySpec",
    "check_limits",
    "check_url_form",
]
