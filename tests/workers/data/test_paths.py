from __future__ import annotations

from pathlib import Path

import pytest

from workers.data import DataError, resolve_local_path

pytestmark = pytest.mark.unit


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "data.jsonl").write_text("{}\n")
    (tmp_path / "secret.txt").write_text("outside")
    return root


def test_relative_path_resolves_under_root(root: Path) -> None:
    assert resolve_local_path("sub/data.jsonl", [root], field="f") == root / "sub" / "data.jsonl"


def test_absolute_path_inside_root_is_allowed(root: Path) -> None:
    target = root / "sub" / "data.jsonl"
    assert resolve_local_path(str(target), [root], field="f") == target


def test_second_root_is_searched(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    assert resolve_local_path("x.txt", [root, other], field="f") == other / "x.txt"


def test_dotdot_is_refused_even_inside_root(root: Path) -> None:
    with pytest.raises(DataError, match=r"contains '\.\.'") as info:
        resolve_local_path("sub/../sub/data.jsonl", [root], field="pretraining.path")
    assert info.value.field == "pretraining.path"
    with pytest.raises(DataError, match=r"'\.\.'"):
        resolve_local_path("../secret.txt", [root], field="f")


def test_absolute_path_outside_roots_is_refused(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="outside the allowed roots"):
        resolve_local_path(str(tmp_path / "secret.txt"), [root], field="f")


def test_symlink_escaping_root_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "dirlink").symlink_to(tmp_path)
    with pytest.raises(DataError, match="link to"):
        resolve_local_path("link.txt", [root], field="f")
    with pytest.raises(DataError, match="link to"):
        resolve_local_path("dirlink/secret.txt", [root], field="f")


def test_symlink_inside_root_is_allowed(root: Path) -> None:
    (root / "alias.jsonl").symlink_to(root / "sub" / "data.jsonl")
    assert resolve_local_path("alias.jsonl", [root], field="f") == root / "sub" / "data.jsonl"


def test_missing_path_and_no_roots(root: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        resolve_local_path("sub/missing.jsonl", [root], field="f")
    with pytest.raises(DataError, match="SHARPMIX_ALLOWED_ROOTS"):
        resolve_local_path("sub/data.jsonl", [], field="f")
    with pytest.raises(DataError, match="empty"):
        resolve_local_path("  ", [root], field="f")
