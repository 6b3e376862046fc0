"""Loading one data domain (local files or a hub dataset) as a column of text documents."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from workers.data.errors import DataError
from workers.data.paths import resolve_local_path
from workers.data.policy import LoadPolicy
from workers.data.records import record_kind, records_to_texts

# File suffix -> `datasets` builder. A .txt file is read one document per blank-line-separated
# paragraph, so a plain text dump still gets EOS tokens between its documents.
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "text",
}
TEXT_COLUMN = "text"


@dataclass(frozen=True)
class DataSource:
    """One data domain of a sweep (pre-training, a fine-tuning set, a retention set, ...).

    Attributes:
        name: Domain name; also the default prefix of error fields (``"<name>.path"``).
        path: Local file or directory of files (under an allowed root); exactly one of
            ``path`` and ``hub_id``.
        hub_id: Hub dataset id.
        config: Hub dataset configuration (subset) name.
        split: Hub split; local files are always read whole.
        text_field: Field holding the text. Records without it may be chat (``messages``) or
            ``prompt``/``completion`` records instead.
        revision: Hub revision; pin a commit so the cache key and results are reproducible.
    """

    name: str
    path: str | None = None
    hub_id: str | None = None
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    revision: str | None = None


def load_texts(
    src: DataSource,
    policy: LoadPolicy,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    field: str | None = None,
) -> datasets.Dataset:
    """Load a domain as a dataset with one non-empty ``text`` column.

    Args:
        src: The domain.
        policy: The operator's loading policy.
        tokenizer: Supplies the chat template for chat and prompt/completion records.
        field: Error field prefix; defaults to ``src.name``.

    Returns:
        A ``datasets.Dataset`` with the single column ``"text"``, in file order.

    Raises:
        DataError: Bad reference, unsupported or unparsable files, missing text field, or no
            non-empty document.
    """
    prefix = field or src.name
    raw_parts = _load_raw(src, policy, prefix)
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    parts = []
    for raw in raw_parts:
        kind = record_kind(raw.column_names, src.text_field, field=prefix)
        # Our own fingerprint for the converted split: datasets would otherwise pickle the
        # closure (tokenizer included) to hash it, which is slow and warns for large tokenizers.
        fingerprint = _digest(raw._fingerprint, kind.value, src.text_field, template)
        parts.append(
            raw.map(
                lambda batch, kind=kind: {
                    TEXT_COLUMN: records_to_texts(batch, kind, src.text_field, tokenizer)
                },
                batched=True,
                remove_columns=raw.column_names,
                # One text type for every part, so parts from different file types concatenate.
                features=datasets.Features({TEXT_COLUMN: datasets.Value("large_string")}),
                new_fingerprint=fingerprint,
                desc=f"{prefix}: records to text",
            )
        )
    texts = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    texts = texts.filter(
        lambda batch: [bool(t.strip()) for t in batch[TEXT_COLUMN]],
        batched=True,
        new_fingerprint=_digest(texts._fingerprint, "non-empty"),
    )
    if len(texts) == 0:
        where = src.path if src.path is not None else src.hub_id
        raise DataError(
            f"{prefix}.path" if src.path is not None else f"{prefix}.hub_id",
            f"'{where}' has no non-empty '{src.text_field}' documents; point it at data with text",
        )
    return texts


def data_fingerprint(src: DataSource, policy: LoadPolicy, *, field: str | None = None) -> str:
    """A hex digest that changes whenever the domain's documents may change.

    Local files are hashed by relative name and content, so touching or moving the root does
    not invalidate the cache but editing a file does. A hub dataset uses the fingerprint
    ``datasets`` computed for the downloaded split (and the pinned revision).

    Args:
        src: The domain.
        policy: The operator's loading policy.
        field: Error field prefix; defaults to ``src.name``.

    Returns:
        Hex digest, also covering ``text_field`` and how records become text.
    """
    prefix = field or src.name
    digest = hashlib.sha256()
    digest.update(json.dumps([src.text_field, src.config, src.split, src.revision]).encode())
    if src.path is not None:
        root, files = local_files(src, policy, field=prefix)
        for file in files:
            digest.update(str(file.relative_to(root) if file != root else file.name).encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    else:
        for raw in _load_raw(src, policy, prefix):
            digest.update(f"{src.hub_id}:{raw._fingerprint}".encode())
    return digest.hexdigest()


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def local_files(src: DataSource, policy: LoadPolicy, *, field: str) -> tuple[Path, list[Path]]:
    """Resolve ``src.path`` to the data files it names.

    A directory contributes every supported file beneath it (sorted, hidden files skipped).

    Returns:
        The resolved path and its files, sorted.

    Raises:
        DataError: Path outside the roots or missing, a single file of unsupported type, or a
            directory without supported files.
    """
    assert src.path is not None
    path = resolve_local_path(src.path, policy.allowed_roots, field=f"{field}.path")
    supported = ", ".join(SUPPORTED_SUFFIXES)
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(
                f"{field}.path",
                f"unsupported file type '{path.suffix or path.name}'; supported: {supported}",
            )
        return path, [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUPPORTED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(
            f"{field}.path", f"directory '{src.path}' has no data files; supported: {supported}"
        )
    return path, files


def _load_raw(src: DataSource, policy: LoadPolicy, prefix: str) -> list[datasets.Dataset]:
    """Load the records, one dataset per file type (their columns may differ)."""
    if (src.path is None) == (src.hub_id is None):
        raise DataError(prefix, f"give exactly one of {prefix}.path and {prefix}.hub_id")
    cache = str(policy.cache_dir / "datasets")
    if src.path is not None:
        _, files = local_files(src, policy, field=prefix)
        by_builder: dict[str, list[str]] = defaultdict(list)
        for file in files:
            by_builder[SUPPORTED_SUFFIXES[file.suffix.lower()]].append(str(file))
        parts = []
        for builder, names in sorted(by_builder.items()):
            extra = {"sample_by": "paragraph"} if builder == "text" else {}
            try:
                parts.append(
                    datasets.load_dataset(
                        builder, data_files=names, split="train", cache_dir=cache, **extra
                    )
                )
            except Exception as exc:  # datasets wraps parser errors in several exception types
                raise DataError(
                    f"{prefix}.path",
                    f"cannot parse the {builder} files under '{src.path}': {exc}; check that "
                    "each file is valid and that records share their fields",
                ) from exc
        return parts
    if policy.offline:
        raise DataError(
            f"{prefix}.hub_id",
            f"this server is offline (SHARPMIX_OFFLINE), so dataset '{src.hub_id}' cannot be "
            f"fetched; put its files under an allowed root and use {prefix}.path",
        )
    try:
        loaded = datasets.load_dataset(
            src.hub_id, src.config, split=src.split, revision=src.revision, cache_dir=cache
        )
    except Exception as exc:  # network, auth, missing repo/config/split: all user-fixable here
        raise DataError(
            f"{prefix}.hub_id",
            f"cannot load dataset '{src.hub_id}' (config {src.config!r}, split {src.split!r}): "
            f"{exc}; check the id, config and split, or download it and use {prefix}.path",
        ) from exc
    assert isinstance(loaded, datasets.Dataset)  # a split was named, so not a DatasetDict
    return [loaded]
