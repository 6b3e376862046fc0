"""A sweep's answer in the configuration language of the training stack that will use it.

Our ratio is a *token* share: ``r`` of the mix's tokens come from the pre-training set, ``1 - r``
from the fine-tuning sets, split by their ``weight``. Most training stacks sample *examples*
(documents, conversations) by probability, so a token share becomes an example share through the
measured mean length of each source's examples:

    example_share_k  proportional to  token_share_k / tokens_per_example_k

(the worker records each set's tokens and documents, EOS separators included, when it tokenises
it). Stacks that mix fixed-length sequences or tokens (OLMo-core's ``target_ratio``, Megatron's
``blend`` of packed samples) take the token share as it is. Every file says which share it holds.

A source whose share is 0 is left out of the file with a warning: a sampler cannot draw from it,
and HF's ``stopping_strategy="all_exhausted"`` would never end waiting for it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from contract.mix import ratio_weights
from contract.spec import SweepSpec

__all__ = ["FORMATS", "ExportError", "ExportFile", "SourceShare", "render_export", "shares"]

Format = Literal["json", "hf", "llamafactory", "axolotl", "torchtune", "olmo-core", "megatron"]
FORMATS: tuple[Format, ...] = (
    "json",
    "hf",
    "llamafactory",
    "axolotl",
    "torchtune",
    "olmo-core",
    "megatron",
)
# Which formats need per-example shares (and so the measured token counts).
_EXAMPLE_FORMATS = {"hf", "llamafactory", "axolotl", "torchtune"}
_DIGITS = 6  # shares are written with this many decimals, summing to exactly 1


class ExportError(ValueError):
    """The export cannot be made as asked; the message says what to change."""


@dataclass(frozen=True)
class SourceShare:
    """One data set of the mix and its share of it."""

    name: str
    role: Literal["pretraining", "finetuning"]
    location: str  # the path or hub id the sweep read
    token_share: float
    tokens: int | None = None
    documents: int | None = None
    example_share: float | None = None

    @property
    def tokens_per_example(self) -> float | None:
        if not self.tokens or not self.documents:
            return None
        return self.tokens / self.documents


@dataclass(frozen=True)
class ExportFile:
    """The rendered file."""

    content: str
    media_type: str
    filename: str
    warnings: list[str] = field(default_factory=list)


def shares(
    spec: SweepSpec,
    ratio: float,
    sources: dict[str, Any] | None,
    weights: dict[str, float] | None = None,
) -> tuple[list[SourceShare], list[str]]:
    """Token and (where the counts are known) example shares of every set at ``ratio``.

    Args:
        weights: The mix's share per pre-training source and fine-tuning set (a k-domain
            recommendation's); None splits ``ratio`` by the sets' relative weights.

    Returns:
        The sets in the sweep's order (pre-training first) and the warnings of the conversion.
    """
    if not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
        raise ExportError(f"ratio must lie in [0, 1], got {ratio}")
    if weights is None and (spec.mixes is not None or spec.mix_search is not None):
        raise ExportError(
            "this sweep's candidates are k-domain mixes, which a ratio alone does not name; "
            "export its recommended mix (leave out ratio=)"
        )
    named = weights if weights is not None else ratio_weights(spec, ratio)
    pretraining = {ref.name for ref in spec.pretraining_sets}
    refs: list[tuple[Any, Literal["pretraining", "finetuning"], float]] = [
        (ref, "pretraining" if ref.name in pretraining else "finetuning", named.get(ref.name, 0.0))
        for ref in spec.direction_sets()
    ]
    counts = sources or {}
    rows: list[SourceShare] = []
    for ref, role, share in refs:
        count = counts.get(ref.name) or {}
        rows.append(
            SourceShare(
                name=ref.name,
                role=role,
                location=str(ref.path or ref.hub_id),
                token_share=share,
                tokens=_positive_int(count.get("tokens")),
                documents=_positive_int(count.get("documents")),
            )
        )
    warnings: list[str] = []
    if all(row.tokens_per_example for row in rows):
        per_example = [row.token_share / (row.tokens_per_example or 1.0) for row in rows]
        total = sum(per_example)
        rows = [
            SourceShare(**{**vars(row), "example_share": w / total})
            for row, w in zip(rows, per_example, strict=True)
        ]
    else:
        warnings.append(
            "the sweep has no token counts of its data sets (it ran before they were recorded, "
            "or no task has finished yet): only token shares are known"
        )
    return rows, warnings


def render_export(
    fmt: str,
    spec: SweepSpec,
    *,
    sweep_id: str,
    ratio: float,
    basis: str | None,
    sources: dict[str, Any] | None,
    weights: dict[str, float] | None = None,
) -> ExportFile:
    """The export file of one format.

    Args:
        fmt: One of :data:`FORMATS`.
        spec: The sweep's spec (set names, paths, fine-tuning weights, seed).
        sweep_id: Named in the file, so a configuration can be traced back to its evidence.
        ratio: The pre-training token share to export (the recommendation's, or one asked for).
        basis: The recommendation's basis (``first_step``/``trajectory``), or None for a ratio
            the caller chose.
        sources: The sweep's recorded ``{name: {"tokens", "documents"}}``, if any.
        weights: The mix's share per set (a k-domain recommendation's), see `shares`.

    Raises:
        ExportError: An unknown format, a ratio outside [0, 1], or an example-share format for
            a sweep without token counts.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    rows, warnings = shares(spec, ratio, sources, weights)
    if fmt in _EXAMPLE_FORMATS and rows[0].example_share is None:
        raise ExportError(
            f"format {fmt} samples examples, and this sweep has no token counts of its data "
            "sets to convert its token shares with; use format olmo-core, megatron or json "
            "(token shares), or rerun the sweep"
        )
    dropped = [row for row in rows if row.token_share == 0.0]
    kept = [row for row in rows if row.token_share > 0.0]
    warnings += [
        f"{row.name} has share 0 at ratio {ratio:g} and is left out of the file" for row in dropped
    ]
    origin = (
        f"sweep {sweep_id}, pre-training ratio {ratio:g} (token share)"
        + (f", {basis} recommendation" if basis else ", a ratio chosen at export")
        + f", planned rate {spec.learning_rate:g}"
    )
    if fmt == "json":
        return _json_file(sweep_id, ratio, basis, rows, warnings)
    if fmt in _EXAMPLE_FORMATS:
        probs = _rounded([row.example_share or 0.0 for row in kept])
        share_note = (
            "per-example sampling shares, converted from the token shares with the measured mean "
            "tokens per example: "
            + ", ".join(f"{row.name} {row.tokens_per_example:.1f}" for row in kept)
        )
    else:
        probs = _rounded([row.token_share for row in kept])
        share_note = "token shares, as measured by the sweep (no conversion)"
    header = [f"sharpmix export: {origin}", f"Weights are {share_note}."] + [
        f"warning: {w}" for w in warnings
    ]
    body = _BUILDERS[fmt](kept, probs, spec)
    comment = "" if fmt == "hf" else "".join(f"# {line}\n" for line in header)
    if fmt == "hf":
        body = json.dumps({"note": " ".join(header), **json.loads(body)}, indent=2) + "\n"
    suffix, media = _FILE_TYPES[fmt]
    return ExportFile(
        comment + body, media, f"sharpmix-{sweep_id}-{fmt}.{suffix}", warnings=warnings
    )


def _json_file(
    sweep_id: str, ratio: float, basis: str | None, rows: list[SourceShare], warnings: list[str]
) -> ExportFile:
    body = {
        "sweep_id": sweep_id,
        "ratio": ratio,
        "basis": basis,
        "share_kinds": {
            "token_share": "fraction of the mix's tokens (what the sweep measured)",
            "example_share": "fraction of the mix's examples (token share over mean example "
            "length, renormalised); null without token counts",
        },
        "sources": [
            {
                "name": row.name,
                "role": row.role,
                "location": row.location,
                "token_share": row.token_share,
                "example_share": row.example_share,
                "tokens": row.tokens,
                "documents": row.documents,
                "tokens_per_example": row.tokens_per_example,
            }
            for row in rows
        ],
        "warnings": warnings,
    }
    return ExportFile(
        json.dumps(body, indent=2) + "\n",
        "application/json",
        f"sharpmix-{sweep_id}-json.json",
        warnings=warnings,
    )


def _hf(rows: list[SourceShare], probs: list[float], spec: SweepSpec) -> str:
    return json.dumps(
        {
            "function": "datasets.interleave_datasets",
            "datasets": [{"name": row.name, "location": row.location} for row in rows],
            "probabilities": probs,
            "seed": spec.seed,
            "stopping_strategy": "all_exhausted",
        }
    )


def _llamafactory(rows: list[SourceShare], probs: list[float], spec: SweepSpec) -> str:
    # Names refer to entries of the user's dataset_info.json; we use the sweep's set names.
    return (
        f"dataset: {','.join(row.name for row in rows)}\n"
        "mix_strategy: interleave_under\n"
        f"interleave_probs: {','.join(_num(p) for p in probs)}\n"
    )


def _axolotl(rows: list[SourceShare], probs: list[float], spec: SweepSpec) -> str:
    lines = ["datasets:"]
    for row, p in zip(rows, probs, strict=True):
        lines += [f"  - path: {_yaml_str(row.location)}", f"    weight: {_num(p)}"]
    return "\n".join(lines) + "\n"


def _torchtune(rows: list[SourceShare], probs: list[float], spec: SweepSpec) -> str:
    lines = [
        "# torchtune.datasets.InterleavedDataset(datasets=[...], weights=[...]) in this order:",
        *(f"#   {i}: {row.name} ({row.location})" for i, row in enumerate(rows)),
        "dataset:",
        "  weights: [" + ", ".join(_num(p) for p in probs) + "]",
        f"  seed: {spec.seed}",
    ]
    return "\n".join(lines) + "\n"


def _olmo_core(rows: list[SourceShare], probs: list[float], spec: SweepSpec) -> str:
    lines = ["source_mixture_config:", "  source_configs:"]
    for row, p in zip(rows, probs, strict=True):
        lines += [
            f"    - source_name: {_yaml_str(row.name)}",
            f"      target_ratio: {_num(p)}",
            f"      paths: [{_yaml_str(row.location)}]",
        ]
    return "\n".join(lines) + "\n"


def _megatron(rows: list[SourceShare], probs: list[float], spec: SweepSpec) -> str:
    # "weight prefix" pairs, as --data-path takes them (Megatron-Core's blend: the prefixes and
    # the weights); the prefixes stand for the user's preprocessed files of these sets.
    pairs = " ".join(f"{_num(p)} {row.location}" for row, p in zip(rows, probs, strict=True))
    return f"--data-path {pairs}\n"


_BUILDERS = {
    "hf": _hf,
    "llamafactory": _llamafactory,
    "axolotl": _axolotl,
    "torchtune": _torchtune,
    "olmo-core": _olmo_core,
    "megatron": _megatron,
}
_FILE_TYPES = {
    "hf": ("json", "application/json"),
    "llamafactory": ("yaml", "application/yaml"),
    "axolotl": ("yaml", "application/yaml"),
    "torchtune": ("yaml", "application/yaml"),
    "olmo-core": ("yaml", "application/yaml"),
    "megatron": ("txt", "text/plain"),
}


def _rounded(values: list[float]) -> list[float]:
    """``values`` normalised and rounded to ``_DIGITS`` decimals, summing to exactly 1."""
    total = sum(values)
    out = [round(v / total, _DIGITS) for v in values]
    # Put the rounding remainder on the largest share, where it changes the least.
    big = max(range(len(out)), key=out.__getitem__)
    out[big] = round(1.0 - sum(v for i, v in enumerate(out) if i != big), _DIGITS)
    return out


def _num(value: float) -> str:
    return f"{value:.{_DIGITS}f}".rstrip("0").rstrip(".") or "0"


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML flow scalar


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None
