"""Enforce the direction of imports between the layers (CONTRIBUTING.md draws them).

- ``contract`` imports only pydantic and the standard library: both sides read it, the HTTP
  client included, without loading the other side.
- ``service`` never imports ``workers`` or ``sharpmix``; ``workers`` never imports ``sharpmix``.
- Of ``service``, the workers import only what the worker loop needs (the queue, the engine, the
  settings and the error root), and only in the loop itself (``workers/worker.py``); the rest of
  ``workers`` reads the contract.
- The compute core (``workers/curvature``, ``workers/data``, ``workers/integrations``) must run on
  a bare GPU box and inside someone else's training loop: it imports only torch, transformers,
  datasets and friends, the contract's path rule, and never the service, the database, the web
  framework, Optuna or the sweep worker around it.

Only ``sharpmix`` (the composition root) wires the two sides. Run by ``make check`` and by the
test suite.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPUTE_CORE = ("workers/curvature", "workers/data", "workers/integrations")
FORBIDDEN = (
    "service",
    "sharpmix",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "optuna",
    "alembic",
    "uvicorn",
    "psycopg",
    "pydantic_settings",
)
# Inside the core, the sweep worker (workers/*.py outside the core) is off limits too.
FORBIDDEN_WORKER_MODULES = (
    "workers.sweep",
    "workers.study",
    "workers.worker",
    "workers.runner",
    "workers.recommend",
    "workers.trajectory",
    "workers.forecast",
    # issue 11, parts 2 and 5
    "workers.rates",
    "workers.rate_region",
    "workers.reuse",
    "workers.gradient_store",
)
# What the core may read of the contract: the path rule and its error (no pydantic models).
CORE_CONTRACT = ("contract.paths", "contract.errors")
CONTRACT_THIRD_PARTY = ("pydantic",)
# The one module of workers that talks to the service side, and what it may import there.
WORKER_LOOP = "workers/worker.py"
WORKER_LOOP_SERVICE = ("service.db.queue", "service.db.engine", "service.config", "service.errors")


@dataclass(frozen=True)
class Rule:
    """Which files a rule covers and what it refuses of their imports."""

    name: str
    covers: Callable[[str], bool]
    refuses: Callable[[str, str], bool]  # (file, imported module) -> refused


def _under(*folders: str) -> Callable[[str], bool]:
    return lambda rel: any(rel == f or rel.startswith(f + "/") for f in folders)


def _within(name: str, *modules: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _contract_refuses(rel: str, name: str) -> bool:
    top = name.split(".")[0]
    return not (top == "contract" or top in CONTRACT_THIRD_PARTY or top in sys.stdlib_module_names)


def _workers_refuse(rel: str, name: str) -> bool:
    if _within(name, "sharpmix", "service.api"):
        return True
    if not _within(name, "service"):
        return False
    return rel != WORKER_LOOP or not _within(name, *WORKER_LOOP_SERVICE)


def _core_refuses(rel: str, name: str) -> bool:
    top = name.split(".")[0]
    if top == "contract":
        return not _within(name, *CORE_CONTRACT)
    return top in FORBIDDEN or _within(name, *FORBIDDEN_WORKER_MODULES)


RULES = (
    Rule(
        "the contract imports only pydantic and the standard library",
        _under("contract"),
        _contract_refuses,
    ),
    Rule(
        "service never imports workers or the entry points",
        _under("service"),
        lambda rel, name: _within(name, "workers", "sharpmix"),
    ),
    Rule(
        "workers reach the service side only through the worker loop's queue",
        _under("workers"),
        _workers_refuse,
    ),
    Rule(
        "the compute core imports no service, database, web framework or sweep worker",
        _under(*COMPUTE_CORE),
        _core_refuses,
    ),
)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a.b import c` may name a module (a.b.c) or a name in a.b: judged as a.b.c,
            # which every rule treats like a.b unless c is a module it singles out.
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def violations(root: Path = ROOT) -> list[str]:
    """Every import that breaks a rule, as ``path:line: imports module (rule)``."""
    found: list[str] = []
    for package in ("contract", "service", "workers"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            rules = [rule for rule in RULES if rule.covers(rel)]
            for line, name in _imports(path):
                for rule in rules:
                    if rule.refuses(rel, name):
                        found.append(f"{rel}:{line}: imports {name} ({rule.name})")
                        break
    return found


def main() -> int:
    """Print violations; non-zero exit when there are any."""
    found = violations()
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} import(s) against the layers")
        return 1
    print("the import rules hold: " + "; ".join(rule.name for rule in RULES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
