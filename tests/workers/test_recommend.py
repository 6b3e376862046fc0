"""Recommendation rules of method.md §4 on hand-made measurements."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.spec import SweepSpec
from workers.recommend import recommend

LR = 1e-4


def spec(objective: str = "flat_pretraining", **extra: object) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "model": {"path": "m"},
            "pretraining": {"name": "pt", "path": "pt"},
            "finetuning": [{"name": "math", "path": "math"}],
            "ratios": [0.0, 0.25, 0.5, 0.75, 1.0],
            "learning_rate": LR,
            "seq_len": 128,
            "batch_tokens": 32768,
            "batches": 4,
            "objective": objective,
            **extra,
        }
    )


@dataclass
class Row:
    ratio: float
    eval_set: str
    role: str
    eta_c: float | None
    eta_c_low: float | None
    loss_change: float | None
    status: str = "ok"
    spread: float | None = 1.2


def curves() -> list[Row]:
    # eta_c on pre-training rises with the ratio, on math it falls: they cross near 0.5.
    rows = []
    for r in (0.0, 0.25, 0.5, 0.75, 1.0):
        pt = 1e-6 + 4e-4 * r
        math_ = 4e-4 * (1 - r) + 1e-6
        rows.append(Row(r, "pt", "pretraining", pt, pt * 0.8, 0.02 * (0.5 - r)))
        rows.append(Row(r, "math", "finetuning", math_, math_ * 0.8, -0.05 * (1 - r) + 0.001))
    return rows


def test_flat_rule_picks_smallest_ratio_above_the_planned_rate() -> None:
    rec = recommend(spec(), curves())
    # lower bounds on pt: 0.8e-6, 0.8e-4, 1.6e-4, ...: 0.5 is the first above 1e-4.
    assert rec.ratio == 0.5 and rec.flat_ratio == 0.5 and rec.in_basin
    assert rec.max_stable_lr == pytest.approx(min(1e-6 + 2e-4, 2e-4 + 1e-6))
    assert rec.confidence == "high"
    assert "0.5" in rec.reason


def test_balanced_rule_finds_the_crossing() -> None:
    rec = recommend(spec("balanced"), curves())
    assert rec.ratio == 0.5 and rec.balanced_ratio == 0.5


def test_loss_change_rule_and_ranking() -> None:
    rec = recommend(spec(), curves())
    assert [r.ratio for r in rec.ranking] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # pt loss change 0.02*(0.5-r) is <= 0 from r = 0.5; math still falls there.
    assert rec.least_forgetting_ratio == 0.5


def test_no_candidate_qualifies_says_what_would() -> None:
    rows = [row for row in curves() if row.ratio <= 0.25]
    rec = recommend(spec(), rows)
    assert rec.ratio is None and rec.flat_ratio is None and rec.in_basin is None
    assert "Lower the learning rate below 8.08e-05" in rec.reason
    assert "more pre-training data" in rec.reason


def test_pareto_front_and_warnings() -> None:
    rows = curves()
    rows[0].spread = 50.0
    rows[1].status = "no_increase"
    rec = recommend(spec("pareto", batch_tokens=4096, seq_len=128), rows)
    assert rec.pareto_ratios  # every ratio trades fine-tuning gain against pre-training loss
    assert set(rec.pareto_ratios) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert any("batches disagree" in w for w in rec.warnings)
    assert any("lower bound" in w for w in rec.warnings)
    assert any("batch_tokens=4096" in w for w in rec.warnings)
    assert rec.confidence == "low"


def test_immediate_increase_is_never_in_basin() -> None:
    rows = curves()
    for row in rows:
        if row.eval_set == "pt":
            row.status, row.eta_c, row.eta_c_low = "increases_immediately", None, None
    rec = recommend(spec(), rows)
    assert rec.flat_ratio is None
