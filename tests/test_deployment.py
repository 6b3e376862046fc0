"""The deployment files hold together (no Docker engine runs here, so this is validation only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def test_compose_has_the_promised_services() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    assert "healthcheck" in services["postgres"]
    assert "pgdata" in spec["volumes"]
    assert services["migrate"]["command"] == ["sharpmix", "db", "upgrade"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # Every service is built from the one Dockerfile.
    for name in ("migrate", "api", "worker"):
        build = services[name]["build"]
        assert build == "." or build["context"] == "."


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_the_image_copies_every_package() -> None:
    copied = {
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    }
    assert {"contract", "service", "workers", "sharpmix", "migrations"} <= copied
