"""``GET /v1/sweeps/{id}/trajectories`` and its plot, on points stored as a worker stores them."""

from __future__ import annotations

from sqlalchemy import select

from contract.states import TaskKind, TaskState
from service.db.models import SweepTask, TrajectoryPoint
from tests.service.support import Api

TRAJECTORY = {"steps": 20, "measure_every": 10}


def _store_points(api: Api, sweep_id: str) -> None:
    with api.session() as session:
        tasks = session.scalars(
            select(SweepTask).where(
                SweepTask.sweep_id == sweep_id, SweepTask.kind == TaskKind.trajectory
            )
        ).all()
        assert sorted(t.ratio or 0.0 for t in tasks) == [0.0, 0.25, 0.5]
        for task in tasks:
            ratio = task.ratio or 0.0
            task.state, task.steps_done = TaskState.done, 20
            task.forecast = [
                {
                    "eval_set": "web",
                    "role": "pretraining",
                    "steps": 1000,
                    "drift": 0.1 - ratio,
                    "low": None,
                    "high": 0.2,
                    "measured": False,
                    "method": "fit",
                }
            ]
            for step in (0, 10, 20):
                for name, role in (("web", "pretraining"), ("code", "finetuning")):
                    session.add(
                        TrajectoryPoint(
                            sweep_id=sweep_id,
                            task_id=task.id,
                            ratio=ratio,
                            step=step,
                            lr=1e-3,
                            eval_set=name,
                            role=role,
                            status="ok",
                            loss=3.0,
                            drift=step * (0.001 - ratio / 100),
                            eta_c=2e-3 if step else None,
                            eta_c_low=1e-3,
                            eta_c_high=3e-3,
                            loss_change=-1e-3,
                            forwards=5,
                        )
                    )
        session.commit()


def test_trajectories_per_ratio_with_points_and_forecasts(api: Api) -> None:
    sweep = api.submit(trajectory=TRAJECTORY)
    assert sweep["progress"]["tasks_total"] == 6 and sweep["progress"]["optimizer_steps"] == 0
    url = f"/v1/sweeps/{sweep['id']}/trajectories"
    empty = api.client.get(url, headers=api.headers).json()
    assert [r["state"] for r in empty["ratios"]] == ["queued"] * 3
    assert api.client.get(f"{url[:-13]}/trajectories.png", headers=api.headers).status_code == 409

    _store_points(api, sweep["id"])
    body = api.client.get(url, headers=api.headers).json()
    assert body["planned_steps"] == 1000 and body["tolerance"] == 0.02
    assert body["steps"] == 20 and body["measure_every"] == 10
    first = body["ratios"][0]
    assert first["ratio"] == 0.0 and first["steps_done"] == 20
    assert [(p["step"], p["eval_set"]) for p in first["points"]][:2] == [(0, "web"), (0, "code")]
    assert first["points"][2]["sharpness"] == 1000.0  # 2 / eta_c
    assert first["points"][0]["eta_c"] is None and first["points"][0]["sharpness"] is None
    assert first["forecast"][0]["low"] is None and first["forecast"][0]["high"] == 0.2

    png = api.client.get(f"/v1/sweeps/{sweep['id']}/trajectories.png", headers=api.headers)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_trajectories_of_another_tenant_are_404(api: Api) -> None:
    sweep = api.submit(trajectory=TRAJECTORY)
    other = api.key_for("other")
    assert (
        api.client.get(f"/v1/sweeps/{sweep['id']}/trajectories", headers=other).status_code == 404
    )
