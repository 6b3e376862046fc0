"""The entry points drive the API, so their tests share the service tests' fixtures."""

from __future__ import annotations

from tests.service.conftest import api, live_url, root

__all__ = ["api", "live_url", "root"]
