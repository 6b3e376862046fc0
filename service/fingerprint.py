"""What a sweep's measurements rest on, so they can be reused later (issue 11, part 5).

A sweep's per-domain gradients, reference losses and measurements depend on the model's weights,
the data files, the batch shape, the seed and the optimizer; the candidate ratios and the planned
rate do not. The fingerprint hashes each of those parts separately, so that adding candidates to
a finished sweep can say which one changed when it refuses.

Cheap: file sizes and modification times, and the safetensors headers (names, shapes, dtypes,
offsets), never whole weight files or data sets. A file rewritten with the same size inside one
mtime tick is not seen; one touched with nothing changed is (and refused: measure anew).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from contract.spec import DataRef, SweepSpec
from service.config import Settings
from service.preflight import resolve_under_roots

MAX_FILES = 4096  # files listed per data directory
HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own limit on its JSON header


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _stat(path: Path, base: Path) -> list[Any]:
    info = path.stat()
    return [
        str(path.relative_to(base)) if path != base else path.name,
        info.st_size,
        info.st_mtime_ns,
    ]


def _files(location: Path) -> list[Path]:
    if location.is_file():
        return [location]
    found = sorted(p for p in location.rglob("*") if p.is_file())
    return found[:MAX_FILES]


def _safetensors_header(path: Path) -> str:
    """The sha256 of a safetensors file's JSON header ('' when it cannot be read)."""
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            return ""
        (length,) = struct.unpack("<Q", raw)
        if length > HEADER_LIMIT:
            return ""
        return hashlib.sha256(handle.read(length)).hexdigest()


def _model_part(spec: SweepSpec, settings: Settings) -> str:
    model = spec.model
    if model.path is None:
        # A hub model is pinned by its revision; without one it is whatever the hub serves.
        return _digest({"hub_id": model.hub_id, "revision": model.revision})
    directory = resolve_under_roots(model.path, settings.roots, field="model.path")
    files = _files(directory)
    parts: dict[str, Any] = {
        "path": str(directory),
        "files": [_stat(p, directory) for p in files],
        "headers": {
            str(p.relative_to(directory)): _safetensors_header(p)
            for p in files
            if p.suffix == ".safetensors"
        },
    }
    if model.optimizer_state is not None:
        state = resolve_under_roots(
            model.optimizer_state, settings.roots, field="model.optimizer_state"
        )
        parts["optimizer_state"] = [_stat(state, state.parent), _safetensors_header(state)]
    return _digest(parts)


def _data_part(ref: DataRef, settings: Settings, field: str) -> str:
    described = {"split": ref.split, "config": ref.config, "text_field": ref.text_field}
    if ref.path is None:
        return _digest({"hub_id": ref.hub_id, **described})
    location = resolve_under_roots(ref.path, settings.roots, field=field)
    files = [_stat(p, location) for p in _files(location)]
    return _digest({"path": str(location), "files": files, **described})


def sweep_fingerprint(spec: SweepSpec, settings: Settings) -> dict[str, str]:
    """Per part a measurement rests on, its sha256: ``model``, ``data.<set name>``, ``batches``
    (seq_len, batch_tokens, batches, seed) and ``optimizer``.

    Raises:
        InvalidRequestError: when a local path no longer resolves under the allowed roots.
        OSError: when a file cannot be read.
    """
    parts = {"model": _model_part(spec, settings)}
    fields = spec.field_names()
    for ref in spec.eval_sets():
        parts[f"data.{ref.name}"] = _data_part(ref, settings, f"{fields[ref.name]}.path")
    parts["batches"] = _digest(
        {
            "seq_len": spec.seq_len,
            "batch_tokens": spec.batch_tokens,
            "batches": spec.batches,
            "seed": spec.seed,
        }
    )
    parts["optimizer"] = _digest(spec.optimizer.model_dump(mode="json"))
    return parts


def fingerprint_or_none(spec: SweepSpec, settings: Settings) -> dict[str, str] | None:
    """The sweep's fingerprint at submit, or None when a file cannot be read (adding candidates
    to it is then refused rather than reusing gradients of unknown files)."""
    try:
        return sweep_fingerprint(spec, settings)
    except OSError:
        return None


__all__ = ["fingerprint_or_none", "sweep_fingerprint"]
