"""Prometheus metrics: HTTP traffic by route template, and the job store's state at scrape time.

Each application owns its registry (several apps in one process, as in tests, do not collide). The
store's gauges are computed when Prometheus scrapes, so they are never stale and cost nothing
between scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import sweeps
from service.errors import DatabaseError


class _StoreCollector(Collector):
    """Sweeps and tasks by state, read from the database at each scrape."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("sharpmix_database_up", "1 when the last scrape read the database")
        try:
            with self._session_factory() as session:
                sweep_counts = sweeps.count_sweeps_by_state(session)
                task_counts = sweeps.count_tasks_by_state(session)
        except DatabaseError:
            # A scrape must still answer while the database is down: that is when it matters.
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_sweep = GaugeMetricFamily("sharpmix_sweeps", "Sweeps by state", labels=["state"])
        for state, count in sweep_counts.items():
            by_sweep.add_metric([state.value], count)
        yield by_sweep
        by_task = GaugeMetricFamily("sharpmix_tasks", "Sweep tasks by state", labels=["state"])
        for task_state, count in task_counts.items():
            by_task.add_metric([task_state.value], count)
        yield by_task


class Metrics:
    """The application's registry and its HTTP instruments."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
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
        self.registry.register(_StoreCollector(session_factory))

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time every HTTP request under its route template (``/v1/sweeps/{sweep_id}``).

    Labelled by template, not by URL, so one label value per route and not one per sweep id;
    requests that match no route share the label ``unmatched``.
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
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
