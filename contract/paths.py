"""The one rule for a user's local path: it must stay inside the operator's allowed roots.

The API checks every path of a sweep with it before the sweep is stored, and the data loaders
check each path again with it when they open the file (the roots of the worker may differ, and
the file may have moved). Both read this one function, so they cannot drift apart; each turns a
:class:`~contract.errors.PathError` into its own error, keeping the field and the message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from contract.errors import PathError


def resolve_under_roots(path: str, roots: Sequence[Path], *, field: str) -> Path:
    """Resolve ``path`` to an existing file or directory inside one of ``roots``.

    A relative path is looked up under each root in order and the first that exists wins; an
    absolute path must already lie inside a root. Symbolic links are followed and the *resolved*
    target must still be inside a (resolved) root, so a link cannot lead outside.

    Args:
        path: The path as written in the sweep.
        roots: The operator's allowed roots (``SHARPMIX_ALLOWED_ROOTS``).
        field: Sweep field named in errors, e.g. ``"pretraining.path"``.

    Returns:
        The resolved, existing path.

    Raises:
        PathError: On a NUL byte, an empty path, a ``..`` component, no roots configured, a path
            (or link target) outside every root, a path the operating system refuses to look
            at, or a path that does not exist.
    """
    if "\x00" in path:
        raise PathError(field, "the path contains a NUL byte")
    if not path.strip():
        raise PathError(field, "the path is empty; give a file or directory under an allowed root")
    raw = Path(path)
    # '..' is refused outright, even when it would stay inside a root: a path that climbs is
    # almost always a mistake or a probe, and refusing it keeps the rule easy to state.
    if ".." in raw.parts:
        raise PathError(
            field, f"{path!r} contains '..', which is not allowed; give the path inside a root"
        )
    if not roots:
        raise PathError(
            field,
            "local paths are disabled on this server (no allowed roots); ask the operator to set "
            "SHARPMIX_ALLOWED_ROOTS, or use a hub id",
        )
    try:
        resolved_roots = [Path(os.path.realpath(root)) for root in roots]
        allowed = ", ".join(str(root) for root in resolved_roots)
        if raw.is_absolute():
            candidates = [raw]
            if not _inside(Path(os.path.realpath(raw)), resolved_roots):
                raise PathError(
                    field,
                    f"{path!r} is outside the allowed roots ({allowed}); see "
                    "SHARPMIX_ALLOWED_ROOTS",
                )
        else:
            candidates = [root / raw for root in resolved_roots]
        for candidate in candidates:
            if not candidate.exists() and not candidate.is_symlink():
                continue
            target = Path(os.path.realpath(candidate))
            if not _inside(target, resolved_roots):
                raise PathError(
                    field,
                    f"{path!r} is a link to {target}, outside the allowed roots ({allowed}); copy "
                    "the data under an allowed root instead of linking to it",
                )
            if target.exists():
                return target
    except OSError as exc:
        # A name too long for the file system, a loop of links, an unreadable directory: the
        # operating system refuses to look, which is an unusable path, not a server fault.
        raise PathError(
            field,
            f"this path cannot be checked ({exc.strerror or exc}); give a shorter or valid path",
        ) from exc
    raise PathError(field, f"{path!r} does not exist under the allowed roots ({allowed})")


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)
