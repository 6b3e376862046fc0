"""Webhooks: a signed POST to the sweep's ``notify_url`` when the sweep reaches a final state.

What a receiver gets (one JSON body, the same on every attempt of one delivery):

- ``X-Sharpmix-Delivery`` and ``Idempotency-Key``: the delivery's id. Delivery is at least once
  (a retry after a lost answer sends it again), so receivers keep the ids they have handled.
- ``edition`` in the body: 1 for the sweep's first final state, one more each time added
  candidates reopened it (``POST /v1/sweeps/{id}/candidates``). Each edition is a delivery of its
  own, with its own id, and carries that edition's recommendation: a known id is a retry, a new id
  with a higher edition is a new answer. An edition reopened before it went out is not sent, so
  editions may skip a number; a receiver acts on the highest it has seen.
- ``X-Sharpmix-Event``: ``sweep.succeeded``, ``sweep.failed`` or ``sweep.cancelled``.
- ``X-Sharpmix-Timestamp``: Unix seconds when this attempt was signed.
- ``X-Sharpmix-Signature``: ``sha256=`` and the hex HMAC-SHA256 of ``"<timestamp>." + body`` under
  the tenant's signing key. `verify_signature` is the receiver's check: recompute, compare in
  constant time, and refuse stale timestamps (a replayed old request).

Redirects are not followed (a redirect could lead the POST to a host the operator did not allow),
and the host rule is checked again on every attempt, so narrowing SHARPMIX_WEBHOOK_ALLOWED_HOSTS
stops deliveries already queued.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from contract.spec import SweepSpec
from service.config import Settings
from service.db.deliveries import DueDelivery, Outcome
from service.db.models import Sweep
from service.errors import InvalidRequestError

__all__ = [
    "check_notify_url",
    "host_allowed",
    "payload",
    "post",
    "sign",
    "target_for",
    "verify_signature",
]

SIGNATURE_PREFIX = "sha256="
USER_AGENT = "sharpmix-webhooks/1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Sharpmix-Signature`` value for ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance_seconds: float = 300.0,
    now: float | None = None,
) -> bool:
    """The receiver's check of a webhook: right key, unchanged body, fresh timestamp.

    Args:
        secret: The signing key the operator shared with the receiver.
        body: The raw request body, as received (before any JSON parsing).
        timestamp: The ``X-Sharpmix-Timestamp`` header.
        signature: The ``X-Sharpmix-Signature`` header.
        tolerance_seconds: Oldest (and furthest in the future) timestamp accepted.
        now: The current Unix time (default: the clock).
    """
    try:
        moment = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - moment) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, moment, body), signature)


def host_allowed(url: str, allowed: list[str]) -> bool:
    """Whether the URL's host is on the operator's list (``host`` or ``*.domain``; empty: any)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if not allowed:
        return bool(host)
    for rule in allowed:
        if rule.startswith("*."):
            if host.endswith(rule[1:]) and host != rule[2:]:
                return True
        elif host == rule:
            return True
    return False


def check_notify_url(spec: SweepSpec, tenant: str, settings: Settings) -> None:
    """Refuse at submit time a ``notify_url`` this server would never deliver to.

    Raises:
        InvalidRequestError: naming ``notify_url`` and what to change.
    """
    if spec.notify_url is None:
        return
    if not host_allowed(spec.notify_url, settings.webhook_allowed_hosts):
        hosts = ", ".join(settings.webhook_allowed_hosts)
        raise InvalidRequestError(
            "notify_url",
            f"host {urlsplit(spec.notify_url).hostname!r} is not one this server posts to "
            f"({hosts}; set by SHARPMIX_WEBHOOK_ALLOWED_HOSTS)",
        )
    if settings.webhook_secret_for(tenant) is None:
        raise InvalidRequestError(
            "notify_url",
            "this server has no webhook signing key for your tenant; ask the operator to set "
            "SHARPMIX_WEBHOOK_SECRET (or SHARPMIX_WEBHOOK_TENANT_SECRETS), or leave notify_url out",
        )


def target_for(spec: dict[str, Any], tenant: str, settings: Settings) -> str | None:
    """The URL a finished sweep is posted to: its own ``notify_url``, else the tenant default."""
    own = spec.get("notify_url")
    if isinstance(own, str) and own:
        return own
    return settings.webhook_tenant_urls.get(tenant)


def _utc(moment: datetime | None) -> str | None:
    return moment.replace(tzinfo=UTC).isoformat() if moment is not None else None


def payload(delivery: DueDelivery, sweep: Sweep) -> dict[str, Any]:
    """The JSON body of a delivery: the event, the sweep's outcome and where to read more."""
    base = f"/v1/sweeps/{sweep.id}"
    return {
        "id": delivery.id,
        "event": delivery.event,
        "edition": delivery.edition,
        "sweep": {
            "id": sweep.id,
            "state": sweep.state.value,
            "error": sweep.error,
            "created_at": _utc(sweep.created_at),
            "finished_at": _utc(sweep.finished_at),
            "tasks_total": sweep.tasks_total,
            "tasks_done": sweep.tasks_done,
            "forwards": sweep.forwards,
            "backwards": sweep.backwards,
            "compute_seconds": sweep.compute_seconds,
            "study_name": sweep.study_name,
        },
        "recommendation": sweep.recommendation,
        "links": {
            "sweep": base,
            "recommendation": f"{base}/recommendation",
            "trials": f"{base}/trials",
            "plot": f"{base}/plot.png",
            "deliveries": f"{base}/deliveries",
        },
    }


def post(delivery: DueDelivery, body: dict[str, Any], settings: Settings) -> Outcome:
    """One signed POST attempt; never raises for what the network or the receiver does.

    Args:
        delivery: The claimed delivery (its target, id and tenant).
        body: The JSON body (`payload`).
        settings: Signing keys, the host rule and the timeout.
    """
    started = time.monotonic()
    if not host_allowed(delivery.target, settings.webhook_allowed_hosts):
        return Outcome(
            ok=False,
            error="the host is not in SHARPMIX_WEBHOOK_ALLOWED_HOSTS (any more); not sent",
            retry=False,
        )
    secret = settings.webhook_secret_for(delivery.tenant)
    if secret is None:
        return Outcome(
            ok=False,
            error="no signing key for this tenant (SHARPMIX_WEBHOOK_SECRET); not sent",
            retry=False,
        )
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Sharpmix-Event": delivery.event,
        "X-Sharpmix-Delivery": delivery.id,
        "Idempotency-Key": delivery.id,
        "X-Sharpmix-Timestamp": str(timestamp),
        "X-Sharpmix-Signature": sign(secret.get_secret_value(), timestamp, raw),
    }
    try:
        with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as c:
            response = c.post(delivery.target, content=raw, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(
            ok=False, error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - started
        )
    seconds = time.monotonic() - started
    if 200 <= response.status_code < 300:
        return Outcome(ok=True, status=response.status_code, seconds=seconds)
    return Outcome(
        ok=False,
        status=response.status_code,
        error=f"the receiver answered {response.status_code} {response.reason_phrase}".strip(),
        seconds=seconds,
    )
