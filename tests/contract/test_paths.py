"""The one path rule, and its two readers: the API and the data loaders refuse a path with the
same field and the same words, each as its own error."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.errors import PathError
from contract.paths import resolve_under_roots
from service.errors import InvalidRequestError
from service.preflight import resolve_under_roots as api_resolve
from workers.data import DataError, resolve_local_path

pytestmark = pytest.mark.unit


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


ACCEPTED = {
    "data.jsonl": ("a", "data.jsonl"),  # relative, under the first root
    "only-here.jsonl": ("b", "only-here.jsonl"),  # relative, found under the second root
    "inner-link": ("a", "data.jsonl"),  # a link that stays inside
}
REFUSED = {
    "escape-link": "outside the allowed roots",
    "../outside/secret.jsonl": "contains '..'",
    "missing.jsonl": "does not exist under the allowed roots",
    "  ": "the path is empty",
    "nul\x00byte": "NUL byte",
    "ABSOLUTE_OUTSIDE": "outside the allowed roots",
    "x" * 5000: "cannot be checked",
}


@pytest.mark.parametrize("path", list(ACCEPTED))
def test_paths_inside_a_root_resolve(roots: tuple[Path, Path], path: str) -> None:
    folder, name = ACCEPTED[path]
    assert resolve_under_roots(path, roots, field="f") == roots[0].parent / folder / name


def test_an_absolute_path_inside_a_root_resolves(roots: tuple[Path, Path]) -> None:
    path = roots[0] / "data.jsonl"
    assert resolve_under_roots(str(path), roots, field="f") == path


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_api_and_the_loaders_refuse_alike(roots: tuple[Path, Path], case: str) -> None:
    path = str(roots[0].parent / "outside" / "secret.jsonl") if case == "ABSOLUTE_OUTSIDE" else case
    with pytest.raises(PathError, match=REFUSED[case]) as rule:
        resolve_under_roots(path, roots, field="pretraining.path")
    with pytest.raises(InvalidRequestError) as api:
        api_resolve(path, roots, field="pretraining.path")
    with pytest.raises(DataError) as loader:
        resolve_local_path(path, roots, field="pretraining.path")
    assert rule.value.field == api.value.field == loader.value.field == "pretraining.path"
    assert rule.value.message == api.value.message == loader.value.message


def test_no_roots_means_no_local_paths() -> None:
    with pytest.raises(PathError, match="SHARPMIX_ALLOWED_ROOTS"):
        resolve_under_roots("data.jsonl", [], field="f")
