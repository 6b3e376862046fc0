"""The API (``service.spec``) and the worker (``workers.data``) hold the same path rule twice: the
import direction keeps the API from importing the compute core. This contract test keeps the two
from drifting apart: every path is accepted by both, at the same place, or refused by both."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InvalidRequestError
from service.spec import resolve_under_roots
from workers.data import DataError, resolve_local_path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    first, second, outside = tmp_path / "a", tmp_path / "b", tmp_path / "outside"
    for folder in (first, second, outside):
        folder.mkdir()
    (first / "data.jsonl").write_text("{}\n")
    (second / "only-here.jsonl").write_text("{}\n")
    (outside / "secret.jsonl").write_text("{}\n")
    (first / "inner-link").symlink_to(first / "data.jsonl")
    (first / "escape-link").symlink_to(outside / "secret.jsonl")
    return first, second


CASES = [
    "data.jsonl",  # relative, under the first root
    "only-here.jsonl",  # relative, found under the second root
    "inner-link",  # a link that stays inside
    "escape-link",  # a link that leads out
    "../outside/secret.jsonl",  # climbing
    "missing.jsonl",  # nowhere
    "ABSOLUTE_INSIDE",
    "ABSOLUTE_OUTSIDE",
]


@pytest.mark.parametrize("case", CASES)
def test_api_and_worker_agree(roots: tuple[Path, Path], case: str) -> None:
    path = {
        "ABSOLUTE_INSIDE": str(roots[0] / "data.jsonl"),
        "ABSOLUTE_OUTSIDE": str(roots[0].parent / "outside" / "secret.jsonl"),
    }.get(case, case)
    try:
        api: Path | None = resolve_under_roots(path, roots, field="f")
    except InvalidRequestError:
        api = None
    try:
        worker: Path | None = resolve_local_path(path, roots, field="f")
    except DataError:
        worker = None
    assert api == worker
