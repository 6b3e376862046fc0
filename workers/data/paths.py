"""Resolving user-given local paths without letting them escape the operator's roots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePath

from workers.data.errors import DataError


def resolve_local_path(path: str, roots: Sequence[Path], *, field: str) -> Path:
    """Resolve ``path`` to an existing file or directory inside one of ``roots``.

    A relative path is looked up under each root in order and the first that exists wins; an
    absolute path must already lie inside a root. Symlinks are followed and the *resolved* target
    must still be inside the (resolved) root, so a link cannot smuggle a path out.

    Args:
        path: The path as written in the sweep.
        roots: The operator's allowed roots (``SHARPMIX_ALLOWED_ROOTS``).
        field: Sweep field named in errors, e.g. ``"pretraining.path"``.

    Returns:
        The resolved, existing path.

    Raises:
        DataError: On an empty path, a ``..`` component, a path (or link target) outside every
            root, no roots configured, or a path that does not exist.
    """
    if not path.strip():
        raise DataError(field, "the path is empty; give a file or directory under an allowed root")
    # '..' is refused outright, even when it would stay inside a root: a path that climbs is
    # almost always a mistake or a probe, and refusing it keeps the rule easy to state.
    if ".." in PurePath(path).parts:
        raise DataError(field, f"'{path}' contains '..'; write the path without climbing up")
    if not roots:
        raise DataError(
            field,
            "local paths are disabled on this server (no allowed roots); ask the operator to set "
            "SHARPMIX_ALLOWED_ROOTS, or use a hub id",
        )
    resolved_roots = [root.expanduser().resolve() for root in roots]
    roots_text = ", ".join(str(root) for root in resolved_roots)
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        candidates = [candidate]
        if not any(_inside(candidate.resolve(), root) for root in resolved_roots):
            raise DataError(
                field, f"'{path}' is outside the allowed roots ({roots_text}); move it under one"
            )
    else:
        candidates = [root / candidate for root in resolved_roots]
    for option in candidates:
        if not option.exists() and not option.is_symlink():
            continue
        target = option.resolve()
        if not any(_inside(target, root) for root in resolved_roots):
            raise DataError(
                field,
                f"'{path}' is a link to {target}, outside the allowed roots ({roots_text}); "
                "copy the data under an allowed root instead of linking to it",
            )
        if not target.exists():
            break
        return target
    raise DataError(field, f"'{path}' does not exist under the allowed roots ({roots_text})")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
