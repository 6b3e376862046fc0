"""Webhooks against a real local HTTP receiver: signed POSTs on final states, retries with
backoff, at-least-once across a dead delivery process, tenant defaults, each edition of a reopened
sweep on its own, the deliveries endpoint and the submit-time checks of notify_url."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from contract.spec import SweepSpec
from contract.states import SweepState
from service.config import Settings
from service.db import deliveries
from service.db.models import SweepDelivery, utcnow
from service.notify import DeliveryLoop, backoff_seconds, verify_signature
from service.notify.webhooks import host_allowed
from tests.service.notify.conftest import SECRET, ApiFactory
from tests.service.notify.receiver import Receiver
from tests.service.support import (
    Api,
    add_candidates,
    finish,
    finish_reopened,
    set_state,
    sweep_body,
)

pytestmark = pytest.mark.db


def _loop(api: Api) -> DeliveryLoop:
    return DeliveryLoop(api.app.state.settings, api.app.state.session_factory)


def _deliveries(api: Api, sweep_id: str, headers: dict[str, str] | None = None) -> list[dict]:
    """The sweep's webhook deliveries, as the API lists them."""
    response = api.client.get(f"/v1/sweeps/{sweep_id}/deliveries", headers=headers or api.headers)
    assert response.status_code == 200, response.text
    rows: list[dict] = [row for row in response.json() if row["channel"] == "webhook"]
    return rows


def _seconds_between(earlier: str, later: str) -> float:
    parse = datetime.fromisoformat
    return (parse(later.rstrip("Z")) - parse(earlier.rstrip("Z"))).total_seconds()


def _run_until(api: Api, done: object, timeout: float = 15.0) -> None:
    loop = _loop(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loop.run_once()
        if callable(done) and done():
            return
        time.sleep(0.05)
    raise AssertionError("the delivery did not reach the expected state in time")


def test_final_state_is_posted_once_signed_with_an_idempotency_id(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api()
    sweep = api.submit(notify_url=receiver.url)
    assert _deliveries(api, sweep["id"]) == []  # nothing while the sweep is queued
    _loop(api).run_once()
    assert receiver.requests == []
    recommendation = finish(api, sweep["id"], ratio=0.25)

    _loop(api).run_once()
    _loop(api).run_once()  # a second pass must not post again

    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    assert got.path == "/hook"
    assert got.headers["x-sharpmix-event"] == "sweep.succeeded"
    assert got.headers["idempotency-key"] == got.headers["x-sharpmix-delivery"]
    assert verify_signature(
        SECRET, got.body, got.headers["x-sharpmix-timestamp"], got.headers["x-sharpmix-signature"]
    )
    # A changed body or another key does not verify.
    tampered = got.body.replace(b'"succeeded"', b'"failed"')
    stamp, signature = got.headers["x-sharpmix-timestamp"], got.headers["x-sharpmix-signature"]
    assert not verify_signature(SECRET, tampered, stamp, signature)
    assert not verify_signature("another-key-0123456789", got.body, stamp, signature)
    assert not verify_signature(SECRET, got.body, stamp, signature, now=int(stamp) + 3600)
    body = json.loads(got.body)
    assert body["id"] == got.headers["x-sharpmix-delivery"]
    assert body["event"] == "sweep.succeeded"
    assert body["sweep"]["id"] == sweep["id"]
    assert body["sweep"]["state"] == "succeeded"
    assert body["recommendation"]["ratio"] == recommendation.ratio
    assert body["links"]["recommendation"] == f"/v1/sweeps/{sweep['id']}/recommendation"

    (row,) = _deliveries(api, sweep["id"])
    assert row["id"] == body["id"]
    assert row["channel"] == "webhook"
    assert row["state"] == "delivered"
    assert row["target"] == receiver.url
    assert row["attempts"] == 1
    assert row["next_attempt_at"] is None
    assert row["log"][0]["status"] == 200 and row["log"][0]["ok"] is True


@pytest.mark.slow
def test_failures_are_retried_with_backoff_and_the_same_id(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api(webhook_backoff_seconds=1.0)
    receiver.statuses = [500, 503, 200]
    sweep = api.submit(notify_url=receiver.url)
    api.client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=api.headers)

    loop = _loop(api)
    loop.run_once()
    (row,) = _deliveries(api, sweep["id"])
    assert row["state"] == "pending" and row["last_status"] == 500
    assert "500" in row["last_error"]
    # Not due again before the backoff has passed.
    loop.run_once()
    assert len(receiver.requests) == 1
    _run_until(api, lambda: _deliveries(api, sweep["id"])[0]["state"] == "delivered")

    assert [r.headers["x-sharpmix-event"] for r in receiver.requests] == ["sweep.cancelled"] * 3
    assert len({r.headers["x-sharpmix-delivery"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    (row,) = _deliveries(api, sweep["id"])
    assert [entry["status"] for entry in row["log"]] == [500, 503, 200]
    assert row["attempts"] == 3
    # The second wait is twice the first.
    settings = api.app.state.settings
    assert backoff_seconds(settings, 2) == 2 * backoff_seconds(settings, 1) == 2.0
    first, second, third = (entry["at"] for entry in row["log"])
    assert _seconds_between(first, second) >= 1.0
    assert _seconds_between(second, third) >= 2.0
    assert backoff_seconds(settings.model_copy(update={"webhook_backoff_max_seconds": 1}), 9) == 1


def test_a_delivery_fails_after_its_attempts_and_an_unreachable_host_is_retried(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api(webhook_max_attempts=2)
    receiver.statuses = [500]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()  # nothing listens there
    failing = api.submit(notify_url=receiver.url)
    unreachable = api.submit(notify_url=closed, seed=1)
    for sweep in (failing, unreachable):
        set_state(api, sweep["id"], SweepState.failed, error="out of memory", finished_at=utcnow())

    _run_until(
        api,
        lambda: all(
            _deliveries(api, s["id"])[0]["state"] == "failed" for s in (failing, unreachable)
        ),
    )
    assert len(receiver.requests) == 2
    assert json.loads(receiver.requests[0].body)["sweep"]["error"] == "out of memory"
    (row,) = _deliveries(api, unreachable["id"])
    assert row["attempts"] == 2
    assert row["last_status"] is None
    assert "ConnectError" in row["last_error"]


@pytest.mark.slow
def test_a_claimed_delivery_whose_process_died_is_sent_again(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api()
    sweep = api.submit(notify_url=receiver.url)
    finish(api, sweep["id"])
    sessions = api.app.state.session_factory
    settings = api.app.state.settings
    loop = _loop(api)
    # The state a process leaves when it dies between claiming a delivery and recording it
    # (mid-POST): the row is claimed, with a lease, and no outcome.
    deliveries.enqueue_finished(
        sessions,
        "webhook",
        lambda s: str(s.spec["notify_url"]),
        since=utcnow() - timedelta(hours=1),
    )
    (claimed,) = deliveries.claim_due(sessions, lease_seconds=4.0)
    assert deliveries.claim_due(sessions, lease_seconds=4.0) == []  # leased: nobody else
    loop.run_once()
    assert receiver.requests == []

    # A fresh process once the lease has run out.
    fresh = DeliveryLoop(settings, sessions)
    deadline = time.monotonic() + 30
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.2)
        fresh.run_once()
    assert len(receiver.requests) == 1
    assert receiver.requests[0].headers["x-sharpmix-delivery"] == claimed.id
    # The dead process's late outcome does not overwrite the newer attempt.
    late = deliveries.record_attempt(
        sessions,
        claimed,
        deliveries.Outcome(ok=False, error="late"),
        max_attempts=8,
        backoff=lambda n: 1.0,
    )
    assert late is None
    (row,) = _deliveries(api, sweep["id"])
    assert row["state"] == "delivered" and row["attempts"] == 2


CHILD = """
import sys
from service.config import Settings
from service.db.engine import make_engine, make_session_factory
from service.notify import DeliveryLoop

settings = Settings(
    database_url=sys.argv[1], webhook_secret=sys.argv[2], notify_lease_seconds=3,
    webhook_timeout_seconds=2.5,
)
DeliveryLoop(settings, make_session_factory(make_engine(sys.argv[1]))).run_once()
"""


@pytest.mark.slow
def test_a_delivery_process_killed_mid_post_loses_nothing(
    hooks_api: ApiFactory, receiver: Receiver, db_url: str
) -> None:
    api = hooks_api(notify_lease_seconds=3, webhook_timeout_seconds=2.5)
    receiver.delays = [60.0]  # the first POST hangs: its sender is killed while it waits
    sweep = api.submit(notify_url=receiver.url)
    finish(api, sweep["id"])
    child = subprocess.Popen([sys.executable, "-c", CHILD, db_url, SECRET])
    try:
        assert receiver.got.wait(60), "the child process never posted"
        child.kill()  # SIGKILL: no cleanup, no outcome written
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    (row,) = _deliveries(api, sweep["id"])
    assert row["state"] == "pending" and row["attempts"] == 1 and row["log"] == []

    _run_until(api, lambda: _deliveries(api, sweep["id"])[0]["state"] == "delivered")
    first, second = receiver.requests
    assert first.headers["x-sharpmix-delivery"] == second.headers["x-sharpmix-delivery"]
    assert first.body == second.body
    (row,) = _deliveries(api, sweep["id"])
    assert row["attempts"] == 2
    assert [entry["attempt"] for entry in row["log"]] == [2]


def test_tenant_default_url_and_sweeps_without_a_target(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api(webhook_tenant_urls={"acme": receiver.url})
    other = api.key_for("other")
    mine = api.submit()
    theirs = api.client.post("/v1/sweeps", json=sweep_body(), headers=other).json()
    own_url = api.submit(notify_url=receiver.url + "/own", seed=2)
    old = api.submit(seed=3)
    for sweep in (mine, theirs, own_url):
        finish(api, sweep["id"])
    # Ended before the lookback window (SHARPMIX_NOTIFY_LOOKBACK_HOURS): history is not replayed.
    set_state(api, old["id"], SweepState.failed, finished_at=utcnow() - timedelta(hours=200))

    _loop(api).run_once()

    assert sorted(r.path for r in receiver.requests) == ["/hook", "/hook/own"]
    assert _deliveries(api, old["id"]) == []
    (skipped,) = _deliveries(api, theirs["id"], headers=other)
    assert skipped["state"] == "skipped"
    assert skipped["attempts"] == 0
    assert "no webhook target" in skipped["last_error"]
    # Another tenant's deliveries are as invisible as its sweep.
    response = api.client.get(f"/v1/sweeps/{mine['id']}/deliveries", headers=other)
    assert response.status_code == 404


def _race(api: Api) -> None:
    """Two delivery loops (two API processes) running three passes each, at the same moment."""
    loops = [_loop(api), _loop(api)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(loop: DeliveryLoop) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                loop.run_once()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(loop,)) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_two_delivery_loops_post_each_edition_once(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api()
    ids = [api.submit(notify_url=receiver.url, seed=i)["id"] for i in range(5)]
    for sweep_id in ids:
        finish(api, sweep_id, ratio=0.25)
    _race(api)
    posted = sorted(json.loads(r.body)["sweep"]["id"] for r in receiver.requests)
    assert posted == sorted(ids)

    # Candidates added to every sweep, measured, and a new answer: each sweep's second edition.
    for sweep_id in ids:
        add_candidates(api, sweep_id, [0.75])
        finish_reopened(api, sweep_id, ratio=0.75)
    _race(api)

    bodies = [json.loads(r.body) for r in receiver.requests]
    again = sorted((b["sweep"]["id"], b["edition"], b["recommendation"]["ratio"]) for b in bodies)
    assert again == sorted([(i, 1, 0.25) for i in ids] + [(i, 2, 0.75) for i in ids])
    assert len({b["id"] for b in bodies}) == 10  # a new idempotency id per edition
    with api.session() as session:
        rows = session.scalars(select(SweepDelivery).where(SweepDelivery.channel == "webhook"))
        assert sorted((r.sweep_id, r.edition) for r in rows) == sorted(
            [(i, 1) for i in ids] + [(i, 2) for i in ids]
        )


def test_a_reopened_sweep_is_delivered_again_as_its_next_edition(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api()
    sweep = api.submit(notify_url=receiver.url)
    finish(api, sweep["id"], ratio=0.25)
    _loop(api).run_once()
    (first,) = receiver.requests
    assert json.loads(first.body)["edition"] == 1

    reopened = add_candidates(api, sweep["id"], [0.75])
    assert reopened["edition"] == 2 and reopened["state"] == "running"
    _loop(api).run_once()
    assert len(receiver.requests) == 1  # nothing while the new candidates are measured

    receiver.statuses = [500, 200]  # the second edition's first attempt fails: retried
    recommendation = finish_reopened(api, sweep["id"], ratio=0.75)
    both = ["delivered", "delivered"]
    _run_until(api, lambda: [row["state"] for row in _deliveries(api, sweep["id"])] == both)
    for _ in range(2):
        _loop(api).run_once()  # delivered: not posted again

    _, failed, retried = receiver.requests
    assert failed.body == retried.body
    assert failed.headers["idempotency-key"] == retried.headers["idempotency-key"]
    assert retried.headers["idempotency-key"] != first.headers["idempotency-key"]
    assert retried.headers["x-sharpmix-event"] == "sweep.succeeded"
    assert verify_signature(
        SECRET,
        retried.body,
        retried.headers["x-sharpmix-timestamp"],
        retried.headers["x-sharpmix-signature"],
    )
    body = json.loads(retried.body)
    assert body["id"] == retried.headers["idempotency-key"]
    assert body["edition"] == 2
    assert body["sweep"]["state"] == "succeeded"
    assert body["recommendation"]["ratio"] == recommendation.ratio == 0.75

    one, two = _deliveries(api, sweep["id"])
    assert (one["edition"], one["state"], one["attempts"]) == (1, "delivered", 1)
    assert (two["edition"], two["state"], two["attempts"]) == (2, "delivered", 2)
    assert one["id"] == first.headers["idempotency-key"] and two["id"] == body["id"]
    assert [entry["status"] for entry in two["log"]] == [500, 200]


def test_an_edition_reopened_before_it_went_out_is_not_sent(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api()
    receiver.statuses = [500, 200]
    retrying = api.submit(notify_url=receiver.url)
    unseen = api.submit(notify_url=receiver.url, seed=1)
    finish(api, retrying["id"], ratio=0.25)
    _loop(api).run_once()
    assert _deliveries(api, retrying["id"])[0]["state"] == "pending"  # answered 500: retried
    # Reopened while its first answer waits for a retry, or before the loop saw it at all.
    add_candidates(api, retrying["id"], [0.75])
    finish(api, unseen["id"], ratio=0.25)
    add_candidates(api, unseen["id"], [0.75])
    time.sleep(0.2)  # past the backoff: the first edition's row is due again
    _loop(api).run_once()

    assert len(receiver.requests) == 1
    (superseded,) = _deliveries(api, retrying["id"])
    assert superseded["edition"] == 1 and superseded["state"] == "superseded"
    assert superseded["next_attempt_at"] is None
    assert "reopened" in superseded["last_error"] and "edition 2" in superseded["last_error"]
    assert _deliveries(api, unseen["id"]) == []

    for sweep in (retrying, unseen):
        finish_reopened(api, sweep["id"], ratio=0.75)
    _loop(api).run_once()
    bodies = [json.loads(r.body) for r in receiver.requests[1:]]
    assert sorted((b["sweep"]["id"], b["edition"]) for b in bodies) == sorted(
        [(retrying["id"], 2), (unseen["id"], 2)]
    )
    assert {b["recommendation"]["ratio"] for b in bodies} == {0.75}
    assert [row["state"] for row in _deliveries(api, retrying["id"])] == ["superseded", "delivered"]


def test_a_reopened_sweep_cancelled_is_delivered_as_cancelled(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api()
    sweep = api.submit(notify_url=receiver.url)
    finish(api, sweep["id"])
    _loop(api).run_once()
    add_candidates(api, sweep["id"], [0.75])
    cancelled = api.client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=api.headers).json()
    assert cancelled["state"] == "cancelled" and cancelled["edition"] == 2
    _loop(api).run_once()

    first, second = (json.loads(r.body) for r in receiver.requests)
    assert (first["event"], first["edition"]) == ("sweep.succeeded", 1)
    assert (second["event"], second["edition"]) == ("sweep.cancelled", 2)
    assert second["recommendation"] is None
    rows = api.client.get(f"/v1/sweeps/{sweep['id']}/deliveries", headers=api.headers).json()
    # No answer to write into the study for a cancelled edition.
    assert {(r["channel"], r["edition"], r["state"]) for r in rows if r["edition"] == 2} == {
        ("webhook", 2, "delivered"),
        ("optuna", 2, "skipped"),
    }
    # Cancelled is final for good (the transition table): no third edition.
    response = api.client.post(
        f"/v1/sweeps/{sweep['id']}/candidates", json={"ratios": [0.9]}, headers=api.headers
    )
    assert response.status_code == 409 and "cancelled" in response.json()["detail"]


def test_a_redirect_is_not_followed(hooks_api: ApiFactory, receiver: Receiver) -> None:
    api = hooks_api(webhook_max_attempts=1)
    receiver.statuses = [307]
    sweep = api.submit(notify_url=receiver.url)
    finish(api, sweep["id"])
    _loop(api).run_once()
    (row,) = _deliveries(api, sweep["id"])
    assert row["state"] == "failed"
    assert row["last_status"] == 307
    assert len(receiver.requests) == 1


def test_the_api_process_delivers_in_the_background(
    hooks_api: ApiFactory, receiver: Receiver
) -> None:
    api = hooks_api(notify=True, notify_poll_seconds=0.05)
    sweep = api.submit(notify_url=receiver.url)
    response = api.client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=api.headers)
    assert response.json()["state"] == "cancelled"
    deadline = time.monotonic() + 15
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.headers["x-sharpmix-event"] for r in receiver.requests] == ["sweep.cancelled"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/x", "https://"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://hooks.example.com/x#part", "fragment"),
        ("https:///nohost", "no host"),
        ("https://hooks.example.com:99999/x", "port"),
    ],
)
@pytest.mark.unit
def test_a_malformed_notify_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        SweepSpec.model_validate(sweep_body(notify_url=url))
    (error,) = info.value.errors()
    assert error["loc"] == ("notify_url",)
    assert message in error["msg"]


def test_the_operator_restricts_hosts_and_needs_a_signing_key(hooks_api: ApiFactory) -> None:
    api = hooks_api(webhook_allowed_hosts="hooks.example.com,*.internal.example.com")
    malformed = api.client.post(
        "/v1/sweeps", json=sweep_body(notify_url="ftp://hooks.example.com/x"), headers=api.headers
    )
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"][-1] == "notify_url"
    refused = api.client.post(
        "/v1/sweeps", json=sweep_body(notify_url="http://127.0.0.1:9/x"), headers=api.headers
    )
    assert refused.status_code == 422
    assert "SHARPMIX_WEBHOOK_ALLOWED_HOSTS" in refused.text
    for ok in ("https://hooks.example.com/a", "https://ci.internal.example.com/b"):
        response = api.client.post(
            "/v1/sweeps", json=sweep_body(notify_url=ok), headers=api.headers
        )
        assert response.status_code == 201, response.text
    unsigned = hooks_api(webhook_secret=None)
    response = unsigned.client.post(
        "/v1/sweeps",
        json=sweep_body(notify_url="https://hooks.example.com/a"),
        headers=unsigned.headers,
    )
    assert response.status_code == 422
    assert "SHARPMIX_WEBHOOK_SECRET" in response.text


@pytest.mark.unit
def test_host_rules() -> None:
    rules = ["hooks.example.com", "*.corp.example"]
    assert host_allowed("https://HOOKS.example.com/x", rules)
    assert host_allowed("https://a.b.corp.example/x", rules)
    assert not host_allowed("https://corp.example/x", rules)
    assert not host_allowed("https://evilcorp.example/x", rules)
    assert not host_allowed("https://hooks.example.com.evil.net/x", rules)
    assert host_allowed("https://anything.net/x", [])


@pytest.mark.unit
def test_settings_refuse_weak_or_missing_signing_keys() -> None:
    with pytest.raises(ValueError, match="shorter than 16"):
        Settings(webhook_secret="short")
    with pytest.raises(ValueError, match="no signing key"):
        Settings(webhook_tenant_urls={"acme": "https://hooks.example.com/x"})
    with pytest.raises(ValueError, match="SHARPMIX_NOTIFY_LEASE_SECONDS"):
        Settings(notify_lease_seconds=5, webhook_timeout_seconds=10)
    with pytest.raises(ValueError, match="not an http"):
        Settings(webhook_secret=SECRET, webhook_tenant_urls={"acme": "ftp://x/y"})
    tenant_only = Settings(
        webhook_tenant_secrets={"acme": SECRET},
        webhook_tenant_urls={"acme": "https://hooks.example.com/x"},
    )
    assert tenant_only.webhook_secret_for("acme") is not None
    assert tenant_only.webhook_secret_for("other") is None
