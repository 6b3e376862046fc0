"""The Python client against the application (through FastAPI's TestClient)."""

from __future__ import annotations

import pytest

from contract.spec import SweepSpec
from contract.states import SweepState
from service.client import ClientError, SharpmixClient
from tests.service.support import Api, add_measurement, finish, sweep_body

pytestmark = pytest.mark.db


@pytest.fixture
def client(api: Api) -> SharpmixClient:
    key = api.headers["Authorization"].removeprefix("Bearer ")
    return SharpmixClient("http://testserver", key, http=api.client)


def test_submit_follow_and_read_the_result(api: Api, client: SharpmixClient) -> None:
    sweep = client.submit(SweepSpec.model_validate(sweep_body()), idempotency_key="c1")
    assert client.submit(sweep_body(), idempotency_key="c1").id == sweep.id
    assert client.get(sweep.id).state == SweepState.queued
    assert [s.id for s in client.list_sweeps(limit=5).items] == [sweep.id]
    add_measurement(api, sweep.id, 0.0, "web", 1e-2)
    assert [(t.ratio, t.eval_set) for t in client.trials(sweep.id)] == [(0.0, "web")]
    assert client.plot(sweep.id).startswith(b"\x89PNG")
    with pytest.raises(ClientError) as waiting:
        client.recommendation(sweep.id)
    assert waiting.value.status_code == 409
    finish(api, sweep.id, ratio=0.25)
    seen: list[SweepState] = []
    done = client.wait(sweep.id, on_progress=lambda s: seen.append(s.state))
    assert (done.state, seen) == (SweepState.succeeded, [SweepState.succeeded])
    assert client.recommendation(sweep.id).ratio == 0.25


def test_refusals_carry_the_servers_detail(client: SharpmixClient) -> None:
    with pytest.raises(ClientError, match=r"422: body\.learning_rate: ") as refused:
        client.submit(sweep_body(learning_rate=-1))
    assert refused.value.status_code == 422
    with pytest.raises(ClientError, match="404") as missing:
        client.get("f" * 32)
    assert missing.value.status_code == 404


def test_cancel_and_wait_for_a_cancelled_sweep(client: SharpmixClient) -> None:
    sweep = client.submit(sweep_body())
    assert client.cancel(sweep.id).state == SweepState.cancelled
    assert client.wait(sweep.id).state == SweepState.cancelled


def test_wait_gives_up_after_its_timeout(client: SharpmixClient) -> None:
    sweep = client.submit(sweep_body())
    with pytest.raises(ClientError, match=r"did not finish within 0\.2 s") as late:
        client.wait(sweep.id, timeout=0.2, poll=0.05)
    assert late.value.status_code is None


def test_an_unreachable_server_is_a_client_error() -> None:
    client = SharpmixClient("http://127.0.0.1:9", "smx_x", timeout=2)
    with client, pytest.raises(ClientError, match="cannot reach") as caught:
        client.get("f" * 32)
    assert caught.value.status_code is None
