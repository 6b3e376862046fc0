"""The FastAPI application: ``create_app(settings)`` builds it; ``sharpmix serve`` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.api.deps import KeyCache
from service.api.errors import install_error_handlers
from service.api.limits import BodyLimitMiddleware
from service.api.metrics import Metrics, MetricsMiddleware
from service.api.routes import deliveries, health, reuse, sweeps
from service.config import Settings, get_settings
from service.db.engine import Timeouts, make_engine, make_session_factory
from service.db.migrate import upgrade
from service.db.reads import SweepReader
from service.notify import DeliveryLoop
from service.web import install_web


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (the process's settings when None).

    The engine is created here and disposed when the application shuts down. On the embedded
    SQLite default the database is created and migrated at startup, so one command is enough;
    PostgreSQL is migrated by the operator (`sharpmix db upgrade`), and /readyz says when not.

    Args:
        settings: The validated settings.

    Returns:
        The application, with ``state.settings``, ``state.engine``, ``state.session_factory`` and
        ``state.metrics`` set.
    """
    settings = settings or get_settings()
    timeouts = Timeouts.of(settings)
    engine = make_engine(settings.resolved_database_url, timeouts)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.is_embedded:
            settings.home.mkdir(parents=True, exist_ok=True)
            await run_in_threadpool(upgrade, settings.resolved_database_url)
        # Webhooks, MLflow runs and Optuna answers of finished sweeps, in a thread of this process.
        notifier = DeliveryLoop(settings, app.state.session_factory)
        if settings.notify:
            notifier.start()
        if app.state.sweep_reader is not None and settings.sweep_read_cache:
            await app.state.sweep_reader.start()
        try:
            yield
        finally:
            if app.state.sweep_reader is not None:
                await app.state.sweep_reader.close()
            notifier.stop()
            engine.dispose()

    app = FastAPI(
        title="sharpmix",
        summary="How much pre-training data to mix into a fine-tuning run, from relative "
        "critical sharpness.",
        version="1",
        lifespan=lifespan,
        # Served offline by install_web instead of FastAPI's CDN-loading pages.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    # Single-statement reads skip the BEGIN and COMMIT round trips (SQLite keeps its own rule).
    app.state.read_engine = (
        engine if settings.is_embedded else engine.execution_options(isolation_level="AUTOCOMMIT")
    )
    app.state.key_cache = KeyCache(settings.auth_cache_seconds)
    app.state.sweep_reader = SweepReader.for_url(settings.resolved_database_url, timeouts)
    app.state.metrics = Metrics(app.state.session_factory)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    # Added last, so outermost: requests refused by the body limit are counted too.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    # Before sweeps: its GET /v1/sweeps/compare would otherwise match GET /v1/sweeps/{sweep_id}.
    app.include_router(reuse.router)
    app.include_router(sweeps.router)
    app.include_router(deliveries.router)
    app.include_router(health.router)
    install_web(app)
    return app
