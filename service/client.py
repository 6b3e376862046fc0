"""A small typed Python client for the sharpmix API.

with SharpmixClient("http://127.0.0.1:8000", api_key) as client:
    sweep = client.submit(spec, idempotency_key="my-run-1")
    sweep = client.wait(sweep.id)
    print(client.recommendation(sweep.id).ratio)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import httpx

from contract.recommendation import Recommendation
from contract.reuse import AddCandidates, SweepComparison
from contract.spec import SweepSpec
from contract.wire import SweepOut, SweepPage, TrajectoriesOut, TrialOut
from service.errors import SharpmixError


class ClientError(SharpmixError):
    """The server refused a request, could not be reached, or a wait ran out of time.

    Attributes:
        status_code: The HTTP status, or None when no response came.
        detail: The server's ``detail`` (a string, or the list of fields at fault for 422).
    """

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class WaitTimeoutError(ClientError):
    """A wait ran out of time before the sweep finished (the sweep itself goes on)."""


def _describe(detail: Any) -> str:
    # 422 carries a list of {"loc", "msg"}; say "body.ratios.0: Input should be ..." per field.
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg')}"
            for item in detail
            if isinstance(item, dict)
        )
    return str(detail)


class SharpmixClient:
    """Talks to one sharpmix server with one API key.

    Args:
        url: The server's base URL (``http://host:port``).
        api_key: A key from ``sharpmix keys create``.
        timeout: Seconds per HTTP request.
        http: An httpx client to send through (tests pass FastAPI's TestClient); the client makes
            its own when None, and closes only that one.
    """

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 30.0, http: httpx.Client | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._owned = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)

    def __enter__(self) -> SharpmixClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool (when the client made it)."""
        if self._owned:
            self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            response = self._http.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the sharpmix server at {self.url}: {exc}") from exc
        if response.is_success:
            return response
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        raise ClientError(
            f"{method} {path} answered {response.status_code}: {_describe(detail)}",
            status_code=response.status_code,
            detail=detail,
        )

    def submit(
        self, spec: SweepSpec | Mapping[str, Any], idempotency_key: str | None = None
    ) -> SweepOut:
        """Submit a sweep. A plain mapping is sent as it is, for the server to validate."""
        body = spec.model_dump(mode="json") if isinstance(spec, SweepSpec) else dict(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._request("POST", "/v1/sweeps", json=body, headers=headers)
        return SweepOut.model_validate(response.json())

    def list_sweeps(self, limit: int = 20, cursor: str | None = None) -> SweepPage:
        """One page of your sweeps, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return SweepPage.model_validate(self._request("GET", "/v1/sweeps", params=params).json())

    def get(self, sweep_id: str) -> SweepOut:
        """The sweep's state and progress."""
        return SweepOut.model_validate(self._request("GET", f"/v1/sweeps/{sweep_id}").json())

    def trials(self, sweep_id: str) -> list[TrialOut]:
        """Its measurements so far, one per ratio and evaluation set."""
        rows = self._request("GET", f"/v1/sweeps/{sweep_id}/trials").json()
        return [TrialOut.model_validate(row) for row in rows]

    def trajectories(self, sweep_id: str) -> TrajectoriesOut:
        """Its trajectories so far: per ratio and evaluation set, loss, drift and eta_c by step."""
        response = self._request("GET", f"/v1/sweeps/{sweep_id}/trajectories")
        return TrajectoriesOut.model_validate(response.json())

    def recommendation(self, sweep_id: str) -> Recommendation:
        """The recommendation of a succeeded sweep (ClientError 409 before)."""
        response = self._request("GET", f"/v1/sweeps/{sweep_id}/recommendation")
        return Recommendation.model_validate(response.json())

    def plot(self, sweep_id: str) -> bytes:
        """The PNG of critical sharpness against ratio."""
        return self._request("GET", f"/v1/sweeps/{sweep_id}/plot.png").content

    def trajectory_plot(self, sweep_id: str) -> bytes:
        """The PNG of the trajectories: pre-training drift and lambda_c against step."""
        return self._request("GET", f"/v1/sweeps/{sweep_id}/trajectories.png").content

    def export(self, sweep_id: str, fmt: str = "json", ratio: float | None = None) -> str:
        """The recommended mix (or ``ratio``) as a training stack's configuration, as text."""
        params: dict[str, str] = {"format": fmt}
        if ratio is not None:
            params["ratio"] = repr(ratio)
        return self._request("GET", f"/v1/sweeps/{sweep_id}/export", params=params).text

    def cancel(self, sweep_id: str) -> SweepOut:
        """Ask the sweep to stop."""
        return SweepOut.model_validate(
            self._request("POST", f"/v1/sweeps/{sweep_id}/cancel").json()
        )

    # Issue 11, part 5: reuse of finished sweeps.

    def add_candidates(
        self, sweep_id: str, ratios: list[float], idempotency_key: str | None = None
    ) -> SweepOut:
        """Add candidate ratios to a succeeded sweep; it runs again for them (ClientError 409 when
        its model or data changed, or it has not succeeded; 422 for a ratio it has already)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._request(
            "POST",
            f"/v1/sweeps/{sweep_id}/candidates",
            json=AddCandidates(ratios=ratios).model_dump(mode="json"),
            headers=headers,
        )
        return SweepOut.model_validate(response.json())

    def compare(self, a: str, b: str) -> SweepComparison:
        """Two sweeps side by side: per ratio, both recommendations, the spec differences."""
        response = self._request("GET", "/v1/sweeps/compare", params={"a": a, "b": b})
        return SweepComparison.model_validate(response.json())

    def wait(
        self,
        sweep_id: str,
        *,
        timeout: float = 24 * 3600.0,
        poll: float = 0.5,
        max_poll: float = 10.0,
        on_progress: Callable[[SweepOut], None] | None = None,
    ) -> SweepOut:
        """Poll until the sweep has finished (succeeded, failed or cancelled), backing off.

        A server that is briefly unreachable or answers 503 (database restart) is polled again.

        Args:
            sweep_id: The sweep.
            timeout: Seconds to wait in all.
            poll: First pause between polls; it grows by half each time up to ``max_poll``.
            max_poll: Longest pause between polls.
            on_progress: Called with each state seen (for a progress bar).

        Returns:
            The finished sweep.

        Raises:
            WaitTimeoutError: when the time runs out.
            ClientError: when the server refuses (401, 404).
        """
        deadline = time.monotonic() + timeout
        pause = poll
        while True:
            try:
                sweep = self.get(sweep_id)
            except ClientError as exc:
                if exc.status_code not in (None, 503) or time.monotonic() > deadline:
                    raise
            else:
                if on_progress is not None:
                    on_progress(sweep)
                if sweep.state.is_final:
                    return sweep
            if time.monotonic() + pause > deadline:
                raise WaitTimeoutError(
                    f"sweep {sweep_id} did not finish within {timeout:g} s; it goes on: "
                    f"wait again with `sharpmix sweeps wait {sweep_id}`"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, max_poll)
