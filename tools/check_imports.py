"""Enforce the import direction: the compute core never imports the service side.

``workers/curvature`` and ``workers/data`` must run on a bare GPU box and inside someone else's
training loop, so they may import only torch, transformers, datasets and friends, never the service,
the database, the web framework or Optuna. Run by ``make check`` and by the test suite.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPUTE_CORE = ("workers/curvature", "workers/data", "workers/integrations")
FORBIDDEN = (
    "service",
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
FORBIDDEN_WORKER_MODULES = ("workers.sweep", "workers.study", "workers.worker", "workers.recommend")


def violations(root: Path = ROOT) -> list[str]:
    """Every forbidden import in the compute core, as ``path:line: module``."""
    found: list[str] = []
    for package in COMPUTE_CORE:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in FORBIDDEN or name.startswith(FORBIDDEN_WORKER_MODULES):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: imports {name}")
    return found


def main() -> int:
    """Print violations; non-zero exit when there are any."""
    found = violations()
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} forbidden import(s) in the compute core ({', '.join(COMPUTE_CORE)})")
        return 1
    print(f"import rule holds for {', '.join(COMPUTE_CORE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
