"""100 concurrent submissions with one Idempotency-Key make one sweep, over real
HTTP (uvicorn) on each backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from service.db.models import Sweep, SweepTask
from tests.service.support import Api, sweep_body

pytestmark = pytest.mark.db

CLIENTS = 100


def test_one_idempotency_key_under_100_concurrent_submissions(api: Api, live_url: str) -> None:
    headers = {**api.headers, "Idempotency-Key": "burst"}
    body = sweep_body()

    def submit(_: int) -> tuple[int, str]:
        # One client per thread: 100 connections, as 100 independent retrying callers would be.
        with httpx.Client(base_url=live_url, timeout=120) as client:
            response = client.post("/v1/sweeps", json=body, headers=headers)
        return response.status_code, response.json().get("id", response.text)

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(submit, range(CLIENTS)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * (CLIENTS - 1) + [201], results
    assert len({sweep_id for _, sweep_id in results}) == 1
    with api.session() as session:
        assert session.scalar(select(func.count()).select_from(Sweep)) == 1
        assert session.scalar(select(func.count()).select_from(SweepTask)) == 3
