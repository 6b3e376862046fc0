"""What can be checked about a sweep before it is queued, so a mistake gets a 422 naming the
field now instead of a failed sweep later: the operator's limits and the path rule (the
contract's, whose errors become ``InvalidRequestError`` here), then the local files.

Cheap checks only, reading headers and first records, never whole weight files or data sets:

- ``model.path`` is a directory written by ``save_pretrained``: it has a readable
  ``config.json``, safetensors weights whose headers parse (a truncated or corrupt upload is
  caught here), not only pickle weights, and no custom code unless the operator allows it;
- ``model.optimizer_state`` is a safetensors file whose header parses;
- every local data file names its records' text as ``text_field`` says (or holds chat or
  prompt/completion records, which the workers read as well).

What needs the model loaded (the tokenizer, the context length) stays the worker's to check.
"""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contract import paths
from contract.errors import ContractError
from contract.spec import DataRef, SweepSpec
from contract.spec import check_limits as check_contract_limits
from service.config import Settings
from service.errors import InvalidRequestError

OFFLINE_MESSAGE = "this server is offline (SHARPMIX_OFFLINE=1); give a local 'path' instead"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")
# The alternatives to the text field that the workers understand (workers/data/records.py).
CHAT_FIELD = "messages"
PAIR_FIELDS = ("prompt", "completion")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
MAX_FILES = 64  # files looked at per model or data directory
MAX_JSON_BYTES = 16 * 1024 * 1024  # a .json file (one document) is parsed whole up to this size
RESAVE = "write it again with save_pretrained(dir, safe_serialization=True)"


def check_limits(spec: SweepSpec, settings: Settings) -> None:
    """Refuse a sweep above the operator's limits, naming the field and the limit.

    Raises:
        InvalidRequestError: when a size is above its ``SHARPMIX_MAX_*`` limit.
    """
    try:
        check_contract_limits(spec, settings.limits)
    except ContractError as exc:
        # The contract's refusals are the user's to fix: the same field and words, as a 422.
        raise InvalidRequestError(exc.field, exc.message) from exc


def resolve_under_roots(path: str, roots: tuple[Path, ...], *, field: str) -> Path:
    """The contract's path rule (:func:`contract.paths.resolve_under_roots`) for the API.

    Raises:
        InvalidRequestError: when the path escapes every root or does not exist.
    """
    try:
        return paths.resolve_under_roots(path, roots, field=field)
    except ContractError as exc:
        raise InvalidRequestError(exc.field, exc.message) from exc


def check_paths(spec: SweepSpec, settings: Settings) -> None:
    """Check every local path of the spec against the allowed roots, and hub ids against offline
    mode.

    Raises:
        InvalidRequestError: naming the first field at fault.
    """
    roots = settings.roots
    refs = _data_refs(spec)
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


def check_files(spec: SweepSpec, settings: Settings) -> None:
    """Check the spec's local model and data files (after `check_paths`).

    Raises:
        InvalidRequestError: naming the first field at fault and what to change.
    """
    roots = settings.roots
    if spec.model.path is not None:
        model_dir = resolve_under_roots(spec.model.path, roots, field="model.path")
        with _os_errors("model.path"):
            _check_model_dir(model_dir, settings.trust_remote_code)
    if spec.model.optimizer_state is not None:
        state = resolve_under_roots(
            spec.model.optimizer_state, roots, field="model.optimizer_state"
        )
        with _os_errors("model.optimizer_state"):
            _check_safetensors(state, "model.optimizer_state")
    refs = _data_refs(spec)
    for prefix, ref in refs:
        if ref.path is None:
            continue
        location = resolve_under_roots(ref.path, roots, field=f"{prefix}.path")
        with _os_errors(f"{prefix}.path"):
            _check_data(location, ref.text_field, prefix)


def _data_refs(spec: SweepSpec) -> list[tuple[str, DataRef]]:
    """Every data set with its field: each pre-training source, then the other groups."""
    listed = isinstance(spec.pretraining, list)
    refs: list[tuple[str, DataRef]] = [
        (f"pretraining[{i}]" if listed else "pretraining", ref)
        for i, ref in enumerate(spec.pretraining_sets)
    ]
    for group in ("finetuning", "retention", "targets"):
        refs += [(f"{group}[{i}]", ref) for i, ref in enumerate(getattr(spec, group))]
    return refs


@contextmanager
def _os_errors(field: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise InvalidRequestError(
            field, f"cannot read it ({exc.strerror or exc}); make it readable by the server"
        ) from exc


def _check_model_dir(directory: Path, trust_remote_code: bool) -> None:
    field = "model.path"
    if not directory.is_dir():
        raise InvalidRequestError(
            field, "this is a file; give the directory that save_pretrained wrote"
        )
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InvalidRequestError(
            field, "the directory has no config.json; give a directory that save_pretrained wrote"
        )
    try:
        config = json.loads(config_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(
            field, f"config.json is not valid JSON ({exc}); {RESAVE}"
        ) from exc
    if not isinstance(config, dict):
        raise InvalidRequestError(field, f"config.json holds no object; {RESAVE}")
    if "auto_map" in config and not trust_remote_code:
        raise InvalidRequestError(
            field,
            "config.json asks for custom code (auto_map), which this server does not run; use a "
            "model transformers supports, or ask the operator to set SHARPMIX_TRUST_REMOTE_CODE",
        )
    names = sorted(p.name for p in directory.iterdir())
    weights = [directory / n for n in names if n.endswith(".safetensors")]
    if not weights:
        pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickled:
            raise InvalidRequestError(
                field,
                f"only pickle weights ({', '.join(pickled[:4])}), which can run code when "
                f"loaded; convert to safetensors: load the model once yourself and {RESAVE}",
            )
        raise InvalidRequestError(field, f"the directory has no *.safetensors weights; {RESAVE}")
    for path in weights[:MAX_FILES]:
        _check_safetensors(path, field)


def _check_safetensors(path: Path, field: str) -> None:
    """The file starts with a safetensors header that parses and fits the file."""
    if not path.is_file():
        raise InvalidRequestError(field, f"{path.name} is not a file; give a .safetensors file")
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _corrupt(field, path, "shorter than a header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise _corrupt(field, path, "its header is longer than the file")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(field, path, "its header is not JSON") from exc
    if not isinstance(header, dict):
        raise _corrupt(field, path, "its header is not a table of tensors")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise _corrupt(field, path, f"tensor {name!r} lies outside the file")


def _corrupt(field: str, path: Path, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        field,
        f"{path.name} is not a readable safetensors file ({why}: truncated or corrupt); "
        f"{RESAVE} and upload it again",
    )


def _check_data(location: Path, text_field: str, prefix: str) -> None:
    files = (
        [location]
        if location.is_file()
        else sorted(p for p in location.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file())
    )
    for path in files[:MAX_FILES]:
        columns = _first_record_fields(path)
        if columns is None or _readable(columns, text_field):
            continue
        present = ", ".join(sorted(columns)) or "none"
        raise InvalidRequestError(
            f"{prefix}.text_field",
            f"records of {path.name} have no {text_field!r} field (fields present: {present}); "
            f"set text_field to the field holding the text, or give '{CHAT_FIELD}' (chat) or "
            f"'{PAIR_FIELDS[0]}' + '{PAIR_FIELDS[1]}' records",
        )


def _readable(columns: set[str], text_field: str) -> bool:
    return text_field in columns or CHAT_FIELD in columns or set(PAIR_FIELDS) <= columns


def _first_record_fields(path: Path) -> set[str] | None:
    """Field names of the file's first record; None when the format has none to check (plain
    text) or the file cannot be judged cheaply (the workers report what they find)."""
    suffix = path.suffix
    if suffix == ".jsonl":
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    return _fields(_loads(line))
        return None
    if suffix == ".json":
        if path.stat().st_size > MAX_JSON_BYTES:
            return None
        raw = path.read_bytes()
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            # JSON lines under a .json name: the workers' json reader takes those too.
            first = next((line for line in raw.splitlines() if line.strip()), b"")
            return _fields(_loads(first)) if first else None
        if isinstance(value, list):
            return _fields(value[0]) if value else None
        return _fields(value)
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle), None)
        return set(header) if header else None
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # only when a parquet file is given: a heavy import

        try:
            return set(pq.read_schema(path).names)
        except Exception:
            return None
    return None


def _loads(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None


def _fields(record: Any) -> set[str] | None:
    return set(record) if isinstance(record, dict) else None
