"""Local paths of a sweep, resolved by the contract's one rule and refused as a ``DataError``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from contract.errors import PathError
from contract.paths import resolve_under_roots
from workers.data.errors import DataError


def resolve_local_path(path: str, roots: Sequence[Path], *, field: str) -> Path:
    """Resolve ``path`` to an existing file or directory inside one of ``roots``.

    The rule is :func:`contract.paths.resolve_under_roots`, the one the API checks a sweep with;
    here its refusal becomes the data loaders' own error, with the same field and message.

    Args:
        path: The path as written in the sweep.
        roots: The operator's allowed roots (``SHARPMIX_ALLOWED_ROOTS``).
        field: Sweep field named in errors, e.g. ``"pretraining.path"``.

    Returns:
        The resolved, existing path.

    Raises:
        DataError: When the contract's rule refuses the path.
    """
    try:
        return resolve_under_roots(path, roots, field=field)
    except PathError as exc:
        raise DataError(exc.field, exc.message) from exc
