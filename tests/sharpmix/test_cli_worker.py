"""`sharpmix worker` with several GPUs per worker: refused, with the reason and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import get_settings
from sharpmix.cli import EXIT_REFUSED, main


@pytest.fixture
def two_devices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("SHARPMIX_HOME", str(tmp_path))
    monkeypatch.setenv("SHARPMIX_DEVICES", "2")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_worker_refuses_several_devices_before_touching_the_database(
    two_devices: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--exit-when-idle"]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "SHARPMIX_DEVICES" in err and "SHARPMIX_DEVICES=1" in err
    assert not (two_devices / "sharpmix.db").exists()
