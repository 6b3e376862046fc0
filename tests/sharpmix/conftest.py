"""The entry points drive the API, so their tests share the service tests' fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.config import get_settings
from tests.service.conftest import api, live_url, root
from tests.service.support import Api

__all__ = ["api", "environment", "live_url", "root"]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, api: Api, db_url: str) -> Iterator[None]:
    """The CLI reads its settings from the environment: point them at the test database."""
    monkeypatch.setenv("SHARPMIX_HOME", str(api.root))
    monkeypatch.setenv("SHARPMIX_DATABASE_URL", db_url)
    monkeypatch.delenv("SHARPMIX_API_KEY", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
