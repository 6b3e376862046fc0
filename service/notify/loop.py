"""The delivery loop: turns finished sweeps into webhook POSTs and MLflow runs.

It runs in a thread of the API process (``create_app`` starts it; ``SHARPMIX_NOTIFY=0`` turns it
off) and does three things per pass, each in its own short transaction: queue a delivery row for
every sweep that ended without one, claim the rows that are due, and write each attempt's outcome.
The POST or the MLflow logging runs between those transactions, with no row lock held, and never
on a worker, so a slow receiver cannot hold up GPU work. Several API processes may run the loop
at once: claims skip each other's rows, and the outbox's unique (sweep, channel, edition) key stops
a sweep's edition from being queued twice.

Each edition of a sweep (one more each time added candidates reopen it) is delivered on its own,
so receivers hear the new answer. A claimed row whose sweep has been reopened since is not sent
(``superseded``): what it would carry is no longer the sweep's answer.
"""

from __future__ import annotations

import functools
import logging
import threading
from datetime import timedelta

from optuna.storages import RDBStorage
from sqlalchemy.orm import Session, sessionmaker

from contract.states import DeliveryState, SweepState
from service.config import Settings
from service.db import deliveries
from service.db.deliveries import DueDelivery, FinishedSweep, Outcome
from service.db.models import Measurement, Sweep, utcnow
from service.errors import SharpmixError
from service.notify import mlflow_runs, study_attrs, webhooks

__all__ = ["DeliveryLoop", "backoff_seconds"]

log = logging.getLogger("sharpmix.notify")

WEBHOOK = "webhook"
MLFLOW = "mlflow"
OPTUNA = "optuna"


def backoff_seconds(settings: Settings, attempt: int) -> float:
    """Wait after failed attempt ``attempt`` (1-based): doubling from the base, capped."""
    return min(
        settings.webhook_backoff_seconds * 2.0 ** max(attempt - 1, 0),
        settings.webhook_backoff_max_seconds,
    )


class DeliveryLoop:
    """Deliveries of finished sweeps, one pass at a time (`run_once`) or in a thread (`start`)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._optuna: RDBStorage | None = None

    @property
    def channels(self) -> list[str]:
        """The channels this server delivers on: webhooks and the answer into the sweep's Optuna
        study always, MLflow when configured."""
        extra = [MLFLOW] if self.settings.mlflow_tracking_uri else []
        return [WEBHOOK, OPTUNA, *extra]

    def _target(self, channel: str, sweep: FinishedSweep) -> str | None:
        if channel == MLFLOW:
            return self.settings.mlflow_tracking_uri
        if channel == OPTUNA:
            # Only a succeeded sweep has an answer to write into its study.
            return sweep.study_name if sweep.state == SweepState.succeeded else None
        return webhooks.target_for(sweep.spec, sweep.tenant, self.settings)

    def _optuna_storage(self) -> RDBStorage:
        if self._optuna is None:
            url = self.settings.resolved_database_url
            kwargs: dict[str, object] = {"pool_pre_ping": True}
            if url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 60}
            self._optuna = RDBStorage(url, engine_kwargs=kwargs)
        return self._optuna

    def run_once(self) -> dict[DeliveryState, int]:
        """One pass: queue new deliveries, attempt the due ones, record the outcomes.

        Returns:
            How many attempts ended in each state (``pending`` means: will be retried).
        """
        since = utcnow() - timedelta(hours=self.settings.notify_lookback_hours)
        for channel in self.channels:
            deliveries.enqueue_finished(
                self.sessions, channel, functools.partial(self._target, channel), since=since
            )
        lease = self.settings.notify_lease_seconds
        counts = dict.fromkeys(DeliveryState, 0)
        for due in deliveries.claim_due(self.sessions, lease_seconds=lease):
            state = self._deliver(due)
            if state is not None:
                counts[state] += 1
        return counts

    def _deliver(self, due: DueDelivery) -> DeliveryState | None:
        """Send one claimed delivery, or end it unsent when its sweep has moved to a newer
        edition, and record what happened; None when another loop has taken the row over."""
        try:
            sweep, measurements = deliveries.load_sweep(self.sessions, due.sweep_id)
        except SharpmixError as exc:
            outcome = Outcome(ok=False, error=str(exc))
        else:
            if sweep.edition != due.edition:
                state = deliveries.supersede(self.sessions, due, sweep.edition)
                if state is not None:
                    log.info(
                        "%s delivery %s of sweep %s, edition %d: superseded by edition %d",
                        due.channel,
                        due.id,
                        due.sweep_id,
                        due.edition,
                        sweep.edition,
                    )
                return state
            outcome = self._attempt(due, sweep, measurements)
        state = deliveries.record_attempt(
            self.sessions,
            due,
            outcome,
            max_attempts=self.settings.webhook_max_attempts,
            backoff=lambda n: backoff_seconds(self.settings, n),
        )
        if state is not None:
            log.log(
                logging.INFO if outcome.ok else logging.WARNING,
                "%s delivery %s of sweep %s, edition %d, attempt %d: %s",
                due.channel,
                due.id,
                due.sweep_id,
                due.edition,
                due.attempt,
                "delivered" if outcome.ok else f"{outcome.error} ({state.value})",
            )
        return state

    def _attempt(self, due: DueDelivery, sweep: Sweep, measurements: list[Measurement]) -> Outcome:
        if due.channel == MLFLOW:
            return mlflow_runs.log_sweep(due, sweep, measurements, self.settings)
        if due.channel == OPTUNA:
            return study_attrs.annotate_study(due, sweep, self._optuna_storage())
        if due.channel == WEBHOOK:
            return webhooks.post(due, webhooks.payload(due, sweep), self.settings)
        return Outcome(ok=False, error=f"unknown channel {due.channel!r}", retry=False)

    def start(self) -> None:
        """Run passes every ``SHARPMIX_NOTIFY_POLL_SECONDS`` in a daemon thread until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sharpmix-deliveries", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop after its current attempt, and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._optuna is not None:
            self._optuna.engine.dispose()
            self._optuna = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except SharpmixError as exc:  # the database is away: try again next pass
                log.warning("delivery pass skipped: %s", exc)
            except Exception:  # a bug must not end deliveries for the life of the process
                log.exception("delivery pass failed")
            self._stop.wait(self.settings.notify_poll_seconds)
