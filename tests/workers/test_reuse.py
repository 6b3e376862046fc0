"""Warm starts and the gradient store, on hand-made inputs (issue 11, part 5)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from contract.results import MeasurementResult, Status
from contract.spec import Role, SweepSpec
from workers.curvature import DomainGradients
from workers.gradient_store import GradientStore
from workers.reuse import SEEDED_FROM, eta_guesses, seed_study
from workers.study import flat_objective, open_study

OLD = "a" * 32


def spec(**extra: object) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "model": {"path": "m"},
            "pretraining": {"name": "pt", "path": "pt"},
            "finetuning": [{"name": "ft", "path": "ft"}],
            "ratio_range": {"low": 0.2, "high": 0.8, "trials": 4},
            "learning_rate": 1e-3,
            "seq_len": 8,
            "batch_tokens": 64,
            "warm_start_from": OLD,
            **extra,
        }
    )


def row(name: str, eta: float | None, status: Status = Status.ok) -> MeasurementResult:
    role = Role.pretraining if name == "pt" else Role.finetuning
    low = None if eta is None else eta / 2
    return MeasurementResult(name, role, status, eta, low, None, None, None, 3.0, -0.01, 10, 2, [])


def points() -> list[tuple[float, list[MeasurementResult]]]:
    return [
        (0.1, [row("pt", 1e-4), row("ft", 1e-2)]),  # outside the new range
        (0.3, [row("pt", 1e-3), row("ft", 8e-3)]),  # lower bound 5e-4 < lr: infeasible
        (0.5, [row("pt", 4e-3), row("ft", math.inf)]),  # feasible
        (0.7, [row("pt", 5e-3, Status.pruned), row("ft", 5e-3)]),  # pruned: left out
        (0.8, [row("pt", 6e-3)]),  # a set missing: left out
    ]


def test_eta_guesses_are_the_median_finite_eta_per_set() -> None:
    guesses = eta_guesses(points())
    assert guesses["pt"] == pytest.approx(4e-3)  # median of 1e-4, 1e-3, 4e-3, 5e-3, 6e-3
    assert guesses["ft"] == pytest.approx(8e-3)  # inf is not a guess: median of 1e-2, 8e-3, 5e-3


def test_the_study_is_seeded_once_with_the_objective_values() -> None:
    s = spec()
    storage = optuna.storages.InMemoryStorage()
    study = open_study(storage, "s", s, slot=0, ratio=None)  # type: ignore[arg-type]
    assert seed_study(study, s, points()) == 2
    assert seed_study(study, s, points()) == 0  # once per study
    assert study.user_attrs[SEEDED_FROM] == OLD
    trials = {t.params["ratio"]: t for t in study.trials}
    assert sorted(trials) == [0.3, 0.5]
    assert trials[0.5].value == flat_objective(0.5, math.log10(1e-3 / 2e-3))  # feasible: ratio
    assert trials[0.3].value == pytest.approx(1 + math.log10(1e-3 / 5e-4))  # infeasible
    # The sampler asks in the new range, with the seeds as history.
    trial = study.ask()
    assert 0.2 <= trial.suggest_float("ratio", 0.2, 0.8) <= 0.8


def test_no_warm_start_no_seeds() -> None:
    s = spec(warm_start_from=None)
    study = optuna.create_study()
    assert seed_study(study, s, points()) == 0 and not study.trials


def grads(model: nn.Module, seed: int) -> list[DomainGradients]:
    torch.manual_seed(seed)
    params: list[torch.Tensor] = list(model.parameters())
    return [
        DomainGradients(
            params=params,
            grads=[[torch.randn_like(p) for p in params] for _ in range(2)],
            backward_passes=2,
        )
        for _ in range(3)
    ]


def test_the_store_reads_back_what_it_kept(tmp_path: Path) -> None:
    store = GradientStore(tmp_path, max_bytes=1 << 20)
    key = store.key({"model": "x"}, spec(), torch.float32, "cpu")
    assert key is not None and not store.has(key)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    kept = grads(model, 0)
    assert store.save(key, model, kept) and store.has(key)
    # Another process: the same architecture, other parameter objects.
    other = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    back = store.load(key, other)
    assert back is not None and len(back) == 3
    for a, b in zip(kept, back, strict=True):
        assert all(p is q for p, q in zip(b.params, other.parameters(), strict=True))
        assert b.backward_passes == 0
        for da, db in zip(a.grads, b.grads, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(da, db, strict=True))
    # A model without those parameter names cannot use them.
    assert store.load(key, nn.Linear(3, 4)) is None


def test_the_store_keeps_only_what_fits_and_only_what_it_can_name(tmp_path: Path) -> None:
    model = nn.Linear(3, 4)
    small = GradientStore(tmp_path, max_bytes=100)
    key = small.key({"model": "x"}, spec(), torch.float32, "cpu")
    assert key is not None and not small.save(key, model, grads(model, 0))
    assert not small.has(key)
    off = GradientStore(tmp_path, max_bytes=0)
    assert off.key({"model": "x"}, spec(), torch.float32, "cpu") is None
    on = GradientStore(tmp_path, max_bytes=1 << 20)
    assert on.key(None, spec(), torch.float32, "cpu") is None  # no fingerprint
    hub = spec(model={"hub_id": "org/model"})
    assert on.key({"model": "x"}, hub, torch.float32, "cpu") is None  # unpinned hub model
    # The key changes with the direction sets' order, the dtype and the device type.
    base = on.key({"model": "x"}, spec(), torch.float32, "cpu")
    assert base != on.key({"model": "x"}, spec(), torch.bfloat16, "cpu")
    assert base != on.key({"model": "y"}, spec(), torch.float32, "cpu")
    swapped = spec(
        pretraining={"name": "ft", "path": "ft"}, finetuning=[{"name": "pt", "path": "pt"}]
    )
    assert base != on.key({"model": "x"}, swapped, torch.float32, "cpu")
