"""Helpers of the service tests: a valid sweep body, the test application's handle, and direct
writes of what a worker would store (states, measurements, recommendations)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.numpy import save_file
from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.recommendation import Recommendation
from contract.states import SweepState, TaskState
from service.config import Settings
from service.db import tenants
from service.db.models import Measurement, Sweep, SweepTask, utcnow
from service.db.queue import finalize_sweep


def write_model_dir(directory: Path) -> None:
    """What submit-time checks accept as a model: a config and one readable safetensors file
    (the API never loads the weights; workers do)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "olmo2"}))
    save_file({"weight": np.zeros((2, 2), dtype=np.float32)}, str(directory / "model.safetensors"))


def sweep_body(**changes: Any) -> dict[str, Any]:
    """A valid sweep request whose paths exist under the test's root (see ``root``)."""
    body: dict[str, Any] = {
        "model": {"path": "model"},
        "pretraining": {"name": "web", "path": "data/web.jsonl"},
        "finetuning": [{"name": "code", "path": "data/code.jsonl"}],
        "retention": [{"name": "wiki", "path": "data/web.jsonl"}],
        "ratios": [0.0, 0.25, 0.5],
        "learning_rate": 1e-3,
        "seq_len": 16,
        "batch_tokens": 64,
        "batches": 2,
    }
    body.update(changes)
    return body


@dataclass
class Api:
    """A running application, a client, and the key of tenant ``acme``."""

    app: FastAPI
    client: TestClient
    headers: dict[str, str]
    tenant_id: int
    root: Path

    def session(self) -> Session:
        """A session on the application's database (for arranging state as a worker would)."""
        session: Session = self.app.state.session_factory()
        return session

    def key_for(self, tenant: str) -> dict[str, str]:
        """Authorization headers with a new key of ``tenant``."""
        with self.session() as session:
            row = tenants.create_tenant(session, tenant)
            _, key = tenants.create_api_key(session, row.id)
        return {"Authorization": f"Bearer {key}"}

    def submit(self, **changes: Any) -> dict[str, Any]:
        """POST a valid sweep and return the response body."""
        response = self.client.post("/v1/sweeps", json=sweep_body(**changes), headers=self.headers)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result


def make_settings(root: Path, db_url: str, **changes: Any) -> Settings:
    """Settings for a test application: its database, the root as home and only allowed root.

    The sweep read cache is off unless asked for: tests that write a sweep row and read it back
    at once would otherwise race the database's change notice by a millisecond
    (``test_sweep_read_cache`` covers the cache itself).
    """
    changes.setdefault("sweep_read_cache", False)
    return Settings(home=root, database_url=db_url, allowed_roots=[root], **changes)


def set_state(api: Api, sweep_id: str, state: SweepState, **values: Any) -> None:
    """Move a sweep to ``state`` as the worker would, with any other column values."""
    with api.session() as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        sweep.state = state
        for name, value in values.items():
            setattr(sweep, name, value)
        if state == SweepState.running:
            sweep.started_at = utcnow()
        session.commit()


def recommendation_for(ratio: float) -> Recommendation:
    """A recommendation of ``ratio`` as the rules would write it."""
    return Recommendation(
        objective="flat_pretraining",
        ratio=ratio,
        reason="smallest ratio whose pre-training loss stays flat",
        learning_rate=1e-3,
        in_basin=True,
        max_stable_lr=2e-3,
        flat_ratio=ratio,
        balanced_ratio=0.5,
        least_forgetting_ratio=ratio,
        confidence="high",
    )


def finish(api: Api, sweep_id: str, ratio: float = 0.25) -> Recommendation:
    """Mark the sweep succeeded with a stored recommendation for ``ratio``."""
    recommendation = recommendation_for(ratio)
    set_state(
        api, sweep_id, SweepState.succeeded, recommendation=recommendation.model_dump(mode="json")
    )
    return recommendation


def add_candidates(api: Api, sweep_id: str, ratios: list[float]) -> dict[str, Any]:
    """Reopen a succeeded sweep with new candidate ratios, through the API."""
    response = api.client.post(
        f"/v1/sweeps/{sweep_id}/candidates", json={"ratios": ratios}, headers=api.headers
    )
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def finish_reopened(api: Api, sweep_id: str, ratio: float) -> Recommendation:
    """End a reopened sweep as its last worker would: every task done, then the recommendation
    for ``ratio`` written by the queue's own writer (``finalize_sweep``, from ``running`` only)."""
    with api.session() as session:
        tasks = session.scalars(select(SweepTask).where(SweepTask.sweep_id == sweep_id)).all()
        for task in tasks:
            task.state = TaskState.done
        session.get_one(Sweep, sweep_id).tasks_done = len(tasks)
        session.commit()
    recommendation = recommendation_for(ratio)
    ended = finalize_sweep(api.app.state.session_factory, sweep_id, lambda *_, **__: recommendation)
    assert ended, f"sweep {sweep_id} was not running with every task done"
    return recommendation


def add_measurement(
    api: Api, sweep_id: str, ratio: float, eval_set: str, eta_c: float, **values: Any
) -> None:
    """Write one measurement as the worker would, on the task of that ratio (marked done)."""
    with api.session() as session:
        task = session.scalars(
            select(SweepTask).where(SweepTask.sweep_id == sweep_id, SweepTask.ratio == ratio)
        ).one()
        task.state = TaskState.done
        role = {"web": "pretraining", "code": "finetuning"}.get(eval_set, "retention")
        row = {
            "sweep_id": sweep_id,
            "task_id": task.id,
            "ratio": ratio,
            "eval_set": eval_set,
            "role": role,
            "status": "ok",
            "eta_c": eta_c,
            "eta_c_low": eta_c * 0.8,
            "eta_c_high": eta_c * 1.25,
            "sharpness": 2 / eta_c,
            "spread": 0.1,
            "loss": 3.0,
            "loss_change": -0.01,
            "forwards": 40,
            "batches": 2,
            "per_batch": [eta_c, eta_c],
        }
        row.update(values)
        session.add(Measurement(**row))
        session.commit()
