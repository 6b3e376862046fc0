"""Prometheus metrics: HTTP traffic by route template, and the job store's state.

Each application owns its registry (several apps in one process, as in tests, do not collide).

Every label has a bounded set of values, so no client can grow the exposition: the method is one
of the standard HTTP methods or ``other``, the route is a route template or ``unmatched``, the
status is a status code. The store's counts (sweeps and tasks by state) are read at most once
per ``refresh_seconds``, on a thread of their own, and a scrape never waits for the database for
longer than ``wait_seconds``: it answers with the last counts it has and
``sharpmix_database_up 0`` when the database does not answer. The rendered text is reused for
``render_seconds``, so the cost of scraping does not grow with the rate of scrapes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
from anyio import to_thread
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.states import SweepState, TaskState
from service.db import sweeps
from service.errors import DatabaseError

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The method as a label value: a standard method, or ``other`` for anything made up."""
    return method if method in METHODS else "other"


@dataclass
class StoreCounts:
    """The last read of the job store, and whether the latest attempt reached the database."""

    sweeps: dict[SweepState, int] = field(default_factory=dict)
    tasks: dict[TaskState, int] = field(default_factory=dict)
    up: bool = False
    read_at: float = float("-inf")  # monotonic time of the latest attempt


class _StoreCollector(Collector):
    """Sweeps and tasks by state, from the last read of the database."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        counts = self._metrics.store
        up = GaugeMetricFamily(
            "sharpmix_database_up", "1 when the latest read of the job store reached the database"
        )
        up.add_metric([], 1 if counts.up else 0)
        yield up
        if not counts.sweeps:
            return
        by_sweep = GaugeMetricFamily("sharpmix_sweeps", "Sweeps by state", labels=["state"])
        for state, count in counts.sweeps.items():
            by_sweep.add_metric([state.value], count)
        yield by_sweep
        by_task = GaugeMetricFamily("sharpmix_tasks", "Sweep tasks by state", labels=["state"])
        for task_state, count in counts.tasks.items():
            by_task.add_metric([task_state.value], count)
        yield by_task


class Metrics:
    """The application's registry, its HTTP instruments and the cached store counts.

    Args:
        session_factory: Sessions for reading the store's counts.
        refresh_seconds: The counts are read at most this often.
        wait_seconds: A scrape waits at most this long for a read of the counts.
        render_seconds: The rendered text is reused for this long.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        refresh_seconds: float = 5.0,
        wait_seconds: float = 1.0,
        render_seconds: float = 1.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sharpmix_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sharpmix_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.store = StoreCounts()
        self.render_seconds = render_seconds
        self._rendered = b""
        self._rendered_at = float("-inf")
        self.refresh_seconds = refresh_seconds
        self.wait_seconds = wait_seconds
        self._session_factory = session_factory
        self._reading = threading.Lock()  # held by the one read in flight
        # Its own thread budget: a scrape never queues behind requests for the request pool.
        self._limiter = anyio.CapacityLimiter(1)
        self.registry.register(_StoreCollector(self))

    async def refresh(self) -> None:
        """Read the store's counts if the last read is older than ``refresh_seconds``.

        Waits at most ``wait_seconds``; a read still running then goes on in the background and
        serves a later scrape. Only one read runs at a time.
        """
        if time.monotonic() - self.store.read_at < self.refresh_seconds:
            return
        if not self._reading.acquire(blocking=False):
            return
        with anyio.move_on_after(self.wait_seconds):
            await to_thread.run_sync(self._read, limiter=self._limiter, abandon_on_cancel=True)
        if self._reading.locked():
            # The read is stuck on the database: say so now rather than at its end.
            self.store.up = False

    def _read(self) -> None:
        try:
            with self._session_factory() as session:
                by_sweep = sweeps.count_sweeps_by_state(session)
                by_task = sweeps.count_tasks_by_state(session)
            self.store = StoreCounts(by_sweep, by_task, up=True, read_at=time.monotonic())
        except DatabaseError:
            # A scrape must still answer while the database is down: that is when it matters.
            last = self.store
            self.store = StoreCounts(last.sweeps, last.tasks, up=False, read_at=time.monotonic())
        finally:
            self._reading.release()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format, rendered at most once per ``render_seconds``.

        Rendering costs about a millisecond per hundred lines; reusing the text for a second
        keeps a flood of scrapes as cheap as any trivial request, and no scraper needs fresher
        counters than that.
        """
        now = time.monotonic()
        if now - self._rendered_at >= self.render_seconds:
            self._rendered = generate_latest(self.registry)
            self._rendered_at = now
        return self._rendered


class MetricsMiddleware:
    """Count and time every HTTP request under its route template (``/v1/sweeps/{sweep_id}``).

    Labelled by template, not by URL, so one label value per route and not one per sweep id;
    requests that match no route share the label ``unmatched``, and made-up methods ``other``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            # The router stores the matched route in the scope it was handed (this same dict).
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = method_label(scope["method"])
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
