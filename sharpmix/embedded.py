"""The embedded default: the API and a worker in one process, on the SQLite file under
``SHARPMIX_HOME`` (or any ``SHARPMIX_DATABASE_URL``). Used by ``sharpmix serve --embedded`` and by
``sharpmix demo``; production runs the API and ``sharpmix worker`` processes separately."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from service.api.main import create_app
from service.config import Settings
from service.db.migrate import upgrade
from service.errors import InvalidRequestError

log = logging.getLogger("sharpmix.embedded")


class EmbeddedServer:
    """uvicorn serving the API, plus one worker thread.

    Args:
        settings: The settings both halves use.
        host: Interface to listen on.
        port: Port to listen on (0 picks a free one; see :attr:`url` once started).
    """

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
        # Imported here: the worker pulls in torch and transformers, which the plain API does not.
        from workers.worker import Worker

        if settings.devices > 1:
            raise InvalidRequestError(
                "SHARPMIX_DEVICES",
                f"the embedded server's worker runs on one device, not {settings.devices}; set "
                "SHARPMIX_DEVICES=1 here, and run `sharpmix worker` for a worker over several",
                location="environment",
            )
        self.settings = settings
        if settings.is_embedded:
            settings.home.mkdir(parents=True, exist_ok=True)
        # Migrate before either half starts, so the worker never polls a half-made schema.
        upgrade(settings.resolved_database_url)
        self.stop = threading.Event()
        self.worker = Worker(settings, stop=self.stop)
        self._worker_thread = threading.Thread(target=self._work, name="worker", daemon=True)
        config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self._server_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        sockets = [s for server in self.server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until SIGINT/SIGTERM (uvicorn handles them), then stop the worker."""
        self._worker_thread.start()
        try:
            self.server.run()
        finally:
            self.shutdown()

    def start(self, timeout: float = 30.0) -> str:
        """Serve from background threads; returns the URL once the server listens."""
        self._worker_thread.start()
        self._server_thread = threading.Thread(target=self.server.run, name="api", daemon=True)
        self._server_thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._server_thread.is_alive():
                raise RuntimeError("the embedded API server did not start")
            time.sleep(0.05)
        return self.url

    def shutdown(self) -> None:
        """Stop the server and the worker (its current task is handed back)."""
        self.server.should_exit = True
        self.stop.set()
        if self._server_thread is not None:
            self._server_thread.join(timeout=10)
        if self._worker_thread.is_alive():
            self._worker_thread.join()
        self.worker.close()

    def _work(self) -> None:
        try:
            self.worker.run()
        except Exception:  # the API keeps serving; /readyz and the logs show the worker died
            log.exception("the in-process worker stopped")
