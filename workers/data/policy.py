"""What the operator allows a sweep to load: local roots, hub access, remote code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoadPolicy:
    """Operator settings that bound what a sweep may load.

    The worker builds one from its settings (``SHARPMIX_ALLOWED_ROOTS``, ``SHARPMIX_HOME``,
    ``SHARPMIX_OFFLINE``, ...) and passes it to every loader; nothing in this package reads the
    environment itself.

    Attributes:
        allowed_roots: Local model and data paths must resolve inside one of these directories.
        cache_dir: Directory for caches (``SHARPMIX_HOME/cache``); tokenised data lives under
            ``cache_dir/tokens`` and the ``datasets`` Arrow cache under ``cache_dir/datasets``.
        offline: When true, a hub id fails at once with a ``DataError`` instead of trying the
            network (which can hang for minutes behind a firewall).
        trust_remote_code: Allow models whose config asks for custom Python code from the hub.
            Only an operator may turn this on; a sweep cannot.
    """

    allowed_roots: tuple[Path, ...]
    cache_dir: Path
    offline: bool = False
    trust_remote_code: bool = False
