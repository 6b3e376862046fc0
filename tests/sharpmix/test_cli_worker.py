"""`sharpmix worker` with several GPUs per worker: more than the host has is refused, with the
reason and the fix, before the database is touched; so is an embedded server over several
devices. (Two CPU ranks run in test_ranks.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service.config import get_settings
from sharpmix.cli import EXIT_REFUSED, main


@pytest.fixture
def too_many_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("SHARPMIX_HOME", str(tmp_path))
    monkeypatch.setenv("SHARPMIX_DEVICE", "cuda")
    monkeypatch.setenv("SHARPMIX_DEVICES", str(max(2, torch.cuda.device_count() + 1)))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_worker_refuses_more_gpus_than_visible_before_touching_the_database(
    too_many_gpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--exit-when-idle"]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "SHARPMIX_DEVICES" in err and "visible" in err and "SHARPMIX_DEVICE=cpu" in err
    assert not (too_many_gpus / "sharpmix.db").exists()


def test_the_embedded_server_refuses_several_devices_before_touching_the_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHARPMIX_HOME", str(tmp_path))
    monkeypatch.setenv("SHARPMIX_DEVICE", "cpu")
    monkeypatch.setenv("SHARPMIX_DEVICES", "2")
    get_settings.cache_clear()
    try:
        assert main(["serve", "--embedded", "--port", "0"]) == EXIT_REFUSED
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "SHARPMIX_DEVICES=1" in err and "sharpmix worker" in err
    assert not (tmp_path / "sharpmix.db").exists()
