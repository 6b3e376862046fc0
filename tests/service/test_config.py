"""Settings: environment parsing and the refusal of unsafe production defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_embedded_default_lives_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'sharpmix.db'}"
    assert settings.is_embedded
    assert settings.roots == (tmp_path,)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHARPMIX_HOME", str(tmp_path))
    monkeypatch.setenv("SHARPMIX_ALLOWED_ROOTS", f"{tmp_path}/models:{tmp_path}/data")
    monkeypatch.setenv("SHARPMIX_OFFLINE", "1")
    monkeypatch.setenv("SHARPMIX_DATABASE_URL", "postgresql+psycopg://u@h/db")
    settings = Settings()
    assert settings.roots == (tmp_path / "models", tmp_path / "data")
    assert settings.offline
    assert not settings.is_embedded


def test_production_refuses_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="SHARPMIX_DATABASE_URL"):
        Settings(environment="production", home=tmp_path, allowed_roots=[tmp_path])


def test_production_refuses_unrestricted_roots(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="SHARPMIX_ALLOWED_ROOTS"):
        Settings(environment="production", home=tmp_path, database_url="postgresql+psycopg://h/d")


def test_heartbeat_must_fit_in_the_lease(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="HEARTBEAT"):
        Settings(home=tmp_path, lease_seconds=10, heartbeat_seconds=6)


def test_devices_is_a_small_positive_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHARPMIX_DEVICES", "4")
    assert Settings(home=tmp_path).devices == 4
    assert Settings(home=tmp_path, devices=1).devices == 1
    for bad in (0, 65):
        with pytest.raises(ValidationError, match="devices"):
            Settings(home=tmp_path, devices=bad)


def test_several_devices_shard_float32_over_the_first_n(tmp_path: Path) -> None:
    assert Settings(home=tmp_path, devices=2, device="cpu").devices == 2
    assert Settings(home=tmp_path, devices=2, device="cuda").devices == 2
    for bad in ({"dtype": "bfloat16"}, {"device": "cuda:1"}):
        with pytest.raises(ValidationError, match="SHARPMIX_DTYPE=float32"):
            Settings(home=tmp_path, devices=2, **bad)  # type: ignore[arg-type]
    # One device takes any of them, as before.
    assert Settings(home=tmp_path, dtype="bfloat16", device="cuda:1").devices == 1


def test_worker_timeouts_and_micro_batches_are_positive(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).micro_batch_tokens == 0  # per device
    for bad in ({"dist_timeout_seconds": 0}, {"micro_batch_tokens": -1}):
        with pytest.raises(ValidationError):
            Settings(home=tmp_path, **bad)  # type: ignore[arg-type]
