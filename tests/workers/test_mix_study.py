"""k-domain mixes in the Optuna study and the first-step answer: a listed mix is its slot's, a
searched one lies within every bound, and the answer names the mix, never just its ratio."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contract.mix import domains
from contract.spec import SweepSpec
from workers import study as studies
from workers.recommend import recommend


def spec_of(**changes: Any) -> SweepSpec:
    body: dict[str, Any] = {
        "model": {"path": "m"},
        "pretraining": [{"name": "web", "path": "w"}, {"name": "code", "path": "c", "max": 0.3}],
        "finetuning": [{"name": "math", "path": "f", "min": 0.2}],
        "mixes": [
            {"web": 0.5, "code": 0.1, "math": 0.4},
            {"web": 0.1, "math": 0.9},
            {"web": 0.2, "code": 0.3, "math": 0.5},
        ],
        "learning_rate": 1e-4,
        "seq_len": 16,
        "batch_tokens": 64,
    }
    body.update(changes)
    return SweepSpec.model_validate(body)


def test_each_slot_asks_its_listed_mix(tmp_path: Path) -> None:
    spec = spec_of()
    store = studies.storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    try:
        for slot in (2, 0, 1):  # tasks are claimed in any order
            study = studies.open_study(store, "s", spec, slot=slot, ratio=None)
            trial, candidate = studies.ask(study, spec)
            want = {d.name: spec.mixes[slot].get(d.name, 0.0) for d in domains(spec)}  # type: ignore[index]
            assert candidate.weights == want
            assert candidate.ratio == pytest.approx(want["web"] + want["code"])
            assert trial.user_attrs["weight:math"] == want["math"]
    finally:
        store.engine.dispose()


def test_a_search_asks_mixes_within_the_bounds(tmp_path: Path) -> None:
    spec = spec_of(mixes=None, mix_search={"trials": 6})
    store = studies.storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    seen = set()
    try:
        for slot in range(6):
            study = studies.open_study(store, "s", spec, slot=slot, ratio=None)
            trial, candidate = studies.ask(study, spec)
            w = candidate.weights
            assert w is not None
            assert sum(w.values()) == pytest.approx(1.0)
            assert w["code"] <= 0.3 + 1e-9 and w["math"] >= 0.2 - 1e-9
            seen.add(round(w["math"], 6))
            studies.finish(study, trial, spec, candidate.ratio, [], pruned=False)
    finally:
        store.engine.dispose()
    assert len(seen) == 6


@dataclass
class Row:
    weights: dict[str, float]
    eval_set: str
    role: str
    eta_c: float | None
    eta_c_low: float | None
    loss_change: float | None
    status: str = "ok"
    spread: float | None = 1.2

    @property
    def ratio(self) -> float:
        return self.weights["web"] + self.weights["code"]


def rows_of(mix: dict[str, float], pt_low: float, ft_change: float) -> list[Row]:
    return [
        Row(mix, "web", "pretraining", pt_low * 1.25, pt_low, 0.001),
        Row(mix, "code", "pretraining", 1e-3, 8e-4, 0.0),
        Row(mix, "math", "finetuning", 1e-3, 8e-4, ft_change),
    ]


def test_the_flat_rule_over_mixes_tells_mixes_of_one_ratio_apart() -> None:
    spec = spec_of()
    a = {"web": 0.3, "code": 0.0, "math": 0.7}  # ratio 0.3, out of the basin
    b = {"web": 0.1, "code": 0.2, "math": 0.7}  # ratio 0.3 too, in the basin
    c = {"web": 0.6, "code": 0.0, "math": 0.4}  # in the basin, more pre-training data
    rows = rows_of(a, 5e-5, -0.01) + rows_of(b, 2e-4, -0.01) + rows_of(c, 4e-4, -0.005)
    answer = recommend(spec, rows)
    assert answer.weights == b and answer.ratio == pytest.approx(0.3)
    assert answer.in_basin and answer.max_stable_lr == pytest.approx(2e-4)
    assert "web 0.1, code 0.2, math 0.7" in answer.reason
    assert [r.weights for r in answer.ranking] == [b, a, c]  # by ratio, the wider margin first
    assert [r.in_basin for r in answer.ranking] == [True, False, True]

    balanced = recommend(spec_of(objective="balanced"), rows)
    assert balanced.weights == c  # the largest smallest eta_c (4e-4 * 1.25 on web)


def test_no_mix_in_the_basin_says_what_to_change() -> None:
    spec = spec_of()
    rows = rows_of({"web": 0.3, "code": 0.0, "math": 0.7}, 5e-5, -0.01)
    answer = recommend(spec, rows)
    assert answer.ratio is None and answer.weights is None
    assert "Lower the learning rate below 5e-05" in answer.reason
