"""k-domain mixes on the tiny model: one backward per domain and batch however many mixes are
measured, each mix's direction the weighted sum of the domain gradients (method.md §3), and a
worker that runs a k = 3 sweep to a recommendation naming the mix."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from sqlalchemy import select

from contract.mix import Candidate, explicit_mix
from contract.spec import SweepSpec
from contract.states import SweepState, TaskKind
from service.db.engine import make_engine, make_session_factory
from service.db.models import Measurement, Sweep, SweepTask
from service.notify import DeliveryLoop
from tests.conftest import SweepAssets
from tests.workers.test_worker import settings_for, submit
from workers.data import LoadPolicy
from workers.sweep import prepare
from workers.worker import Worker

MIXES = [
    {"general": 0.5, "web": 0.2, "math": 0.3},
    {"general": 0.1, "web": 0.1, "math": 0.8},
    {"general": 0.1, "web": 0.3, "math": 0.6},
]


def k3_body(assets: SweepAssets, **changes: object) -> dict[str, object]:
    """Two pre-training sources (two generated worlds) and the fine-tuning set."""
    from sharpmix.assets.corpora import general_documents

    web = assets.root / "web.jsonl"
    if not web.exists():
        docs = general_documents(200, seed=7, world_seed=3)
        web.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    fields: dict[str, object] = {
        "pretraining": [
            {"name": "general", "path": assets.general},
            {"name": "web", "path": "web.jsonl", "max": 0.5},
        ],
        "ratios": None,
        "mixes": MIXES,
        "batches": 1,
    }
    return assets.spec(**{**fields, **changes})


def test_k3_mixes_cost_one_backward_per_domain_and_step_along_the_weighted_sum(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    spec = SweepSpec.model_validate(k3_body(sweep_assets, optimizer={"name": "sgd"}))
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(spec, policy, device="cpu", dtype=torch.float32)
    grads = prepared.gradients[0]
    assert len(grads.grads) == 3  # general, web, math: spec.direction_sets() in order
    backwards = prepared.backwards
    assert backwards == 3 * spec.batches  # one micro-batch each on this tiny batch

    calls = 0

    def count(grad: torch.Tensor) -> None:
        nonlocal calls
        calls += 1

    # Any backward pass through the model would reach its first parameter.
    handle = next(prepared.model.parameters()).register_hook(count)
    try:
        measured = [
            prepared.measure_ratio(Candidate.of_mix(spec, explicit_mix(spec, slot)))
            for slot in range(len(MIXES))
        ]
    finally:
        handle.remove()
    assert calls == 0 and prepared.backwards == backwards

    model, lr = prepared.model, spec.learning_rate
    for mix, result in zip(MIXES, measured, strict=True):
        assert result.ratio == pytest.approx(mix["general"] + mix["web"])
        # SGD's direction is the gradient: the mix's is sum_k w_k g_k, so its one-step loss
        # change must be L(theta - lr * sum_k w_k g_k) - L(theta), computed here directly.
        weights = [mix["general"], mix["web"], mix["math"]]
        saved = [p.detach().clone() for p in grads.params]
        with torch.no_grad():
            for i, p in enumerate(grads.params):
                p -= lr * sum(w * g[i] for w, g in zip(weights, grads.grads, strict=True))
            after = {
                name: float(prepared.loss_fn(model, batches[0]))
                for name, batches in prepared.eval_batches.items()
            }
            for p, s in zip(grads.params, saved, strict=True):
                p.copy_(s)
        for m in result.measurements:
            assert m.weights == mix
            want = after[m.eval_set] - prepared.loss0[m.eval_set][0]
            # Within a few float32 ulps of a loss near 5 (the two sums round differently).
            assert m.per_batch[0].loss_change == pytest.approx(want, abs=2e-6)
    # Different mixes, different steps: the weights are not ignored.
    changes = {r.measurements[0].loss_change for r in measured}
    assert len(changes) == len(MIXES)


@pytest.mark.db
def test_worker_runs_a_k3_sweep_to_a_recommended_mix(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    # A small planned rate, so that some mix keeps the pre-training losses flat (as in
    # tests/workers/test_study_dashboard.py).
    sweep_id = submit(settings, k3_body(sweep_assets, learning_rate=1e-5))
    worker = Worker(settings, worker_id="w1")
    try:
        assert worker.run(exit_when_idle=True) == len(MIXES)
    finally:
        worker.close()
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            sweep = session.get_one(Sweep, sweep_id)
            assert sweep.state == SweepState.succeeded, sweep.error
            assert sweep.backwards == 3 * 1  # K = 3 domains x B = 1 batch, for all three mixes
            rows = list(
                session.scalars(select(Measurement).where(Measurement.sweep_id == sweep_id))
            )
            assert sorted(json.dumps(m.weights, sort_keys=True) for m in rows) == sorted(
                json.dumps(mix, sort_keys=True) for mix in MIXES for _ in range(3)
            )
            for m in rows:
                assert m.weights is not None
                assert m.ratio == pytest.approx(m.weights["general"] + m.weights["web"])
            answer = sweep.recommendation
            assert answer is not None
            assert len(answer["ranking"]) == len(MIXES)
            assert all(rank["weights"] in MIXES for rank in answer["ranking"])
            assert answer["weights"] in MIXES
            assert answer["ratio"] == pytest.approx(
                answer["weights"]["general"] + answer["weights"]["web"]
            )
        # The answer goes into the sweep's Optuna study: its mix, and the trial that measured it.
        DeliveryLoop(settings, make_session_factory(engine)).run_once()
        study = optuna.load_study(study_name=sweep.study_name, storage=db_url)
        assert study.user_attrs["answer_weights"] == answer["weights"]
        trial = study.trials[study.user_attrs["answer_trial"]]
        assert {k: v for k, v in trial.user_attrs.items() if k.startswith("weight:")} == {
            f"weight:{name}": share for name, share in answer["weights"].items()
        }
    finally:
        engine.dispose()


def test_a_trajectory_steps_on_a_mix_of_two_pre_training_sources(
    sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    from workers.trajectory import _Streams, run_trajectory

    body = k3_body(
        sweep_assets,
        mixes=None,
        ratios=[0.5],
        trajectory={"steps": 2, "measure_every": 1},
        planned_steps=4,
    )
    body["pretraining"] = [
        {"name": "general", "path": sweep_assets.general},
        {"name": "web", "path": "web.jsonl", "weight": 3},
    ]
    spec = SweepSpec.model_validate(body)
    policy = LoadPolicy(allowed_roots=(sweep_assets.root,), cache_dir=tmp_path / "cache")
    prepared = prepare(spec, policy, device="cpu", dtype=torch.float32, gradients=False)
    # The pre-training half splits 1:3 between the sources, as 'weight' asks.
    assert _Streams(prepared, Candidate(0.5)).weights == pytest.approx([0.125, 0.375, 0.5])
    result = run_trajectory(prepared, Candidate(0.5))
    assert result.steps_done == 2
    # Every source and the fine-tuning set is measured along the way, each source a guarded set.
    assert {p.eval_set for p in result.points} == {"general", "web", "math"}
    assert spec.guarded("web") and spec.guarded("general") and not spec.guarded("math")


@pytest.mark.db
def test_listed_mixes_step_on_their_own_weights_and_the_answer_rests_on_them(
    db_url: str, sweep_assets: SweepAssets, tmp_path: Path
) -> None:
    settings = settings_for(db_url, sweep_assets, tmp_path)
    body = k3_body(
        sweep_assets,
        mixes=MIXES[:2],
        learning_rate=1e-5,
        trajectory={"steps": 2, "measure_every": 1},
        planned_steps=4,
    )
    sweep_id = submit(settings, body)
    worker = Worker(settings, worker_id="w1")
    try:
        assert worker.run(exit_when_idle=True) == 2 + 2  # two screens, two trajectories
    finally:
        worker.close()
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            sweep = session.get_one(Sweep, sweep_id)
            assert sweep.state == SweepState.succeeded, sweep.error
            tasks = session.scalars(
                select(SweepTask).where(
                    SweepTask.sweep_id == sweep_id, SweepTask.kind == TaskKind.trajectory
                )
            ).all()
            assert sorted(json.dumps(t.weights, sort_keys=True) for t in tasks) == sorted(
                json.dumps(m, sort_keys=True) for m in MIXES[:2]
            )
            assert all(t.steps_done == 2 and t.forecast for t in tasks)
            for t in tasks:
                assert t.weights is not None
                assert t.ratio == pytest.approx(t.weights["general"] + t.weights["web"])
            answer = sweep.recommendation
            assert answer is not None and answer["basis"] == "trajectory"
            verdicts = answer["trajectories"]
            assert sorted(json.dumps(v["weights"], sort_keys=True) for v in verdicts) == sorted(
                json.dumps(m, sort_keys=True) for m in MIXES[:2]
            )
            # At this small rate both stay within the tolerance: the one with the least
            # pre-training data is the answer, named by its weights.
            assert all(v["within_tolerance"] for v in verdicts)
            assert answer["weights"] == MIXES[1] and answer["ratio"] == pytest.approx(0.2)
            assert "the mix general 0.1, web 0.1, math 0.8" in answer["reason"]
    finally:
        engine.dispose()
