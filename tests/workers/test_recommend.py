"""Recommendation rules of method.md §4 on hand-made measurements."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from contract.spec import SweepSpec
from tests.workers.rows import Row
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
    # The first-step stable rate is the smallest retention lower bound: in_basin <=> lr below it.
    assert rec.max_stable_lr == pytest.approx(0.8 * (1e-6 + 2e-4))
    assert rec.confidence == "high"
    assert rec.basis == "first_step"
    assert "0.5" in rec.reason and "first-step verdict" in rec.reason
    assert "stays flat" not in rec.reason


def test_a_flat_answer_of_one_is_called_no_fine_tuning_data() -> None:
    rows = [row for row in curves() if row.ratio == 1.0 or row.eval_set == "math"]
    for row in rows:
        if row.ratio < 1.0:
            row.eta_c_low = row.eta_c = 1e-6 if row.eval_set == "pt" else row.eta_c
    rows += [Row(r, "pt", "pretraining", 1e-6, 0.8e-6, 0.01) for r in (0.0, 0.25, 0.5, 0.75)]
    rec = recommend(spec(), rows)
    assert rec.ratio == 1.0
    assert "no fine-tuning data" in rec.reason and "most fine-tuning data" not in rec.reason


def test_balanced_rule_says_so_when_the_curves_do_not_cross() -> None:
    rows = [row for row in curves() if row.ratio <= 0.25 or row.eval_set == "pt"]
    # math's eta_c now rises with the ratio as well: min over sets grows to the end of the range.
    rows += [Row(r, "math", "finetuning", 1e-3, 0.8e-3, -0.01) for r in (0.5, 0.75, 1.0)]
    rec = recommend(spec("balanced"), rows)
    assert rec.ratio is None and rec.balanced_ratio is None
    assert "do not cross" in rec.reason


def test_every_ratio_pruned_says_why() -> None:
    rows = [Row(r, "pt", "pretraining", None, None, None, status="pruned") for r in (0.0, 0.5)]
    rec = recommend(spec(), rows)
    assert rec.ratio is None
    assert "was pruned" in rec.reason and "0, 0.5" in rec.reason


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


def test_no_candidate_when_every_first_step_rises_names_no_rate() -> None:
    # Every ratio's pre-training loss rises at once (lower bound 0): no rate below 0 to suggest.
    rows = [Row(r, "pt", "pretraining", 0.0, 0.0, 3e-4, "increases_immediately") for r in (0, 0.5)]
    rec = recommend(spec(), rows)
    assert rec.ratio is None
    assert "below 0" not in rec.reason and "lower bound 0" not in rec.reason
    assert "however small the learning rate" in rec.reason and "first-step" in rec.reason


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


@dataclass
class Traj:
    ratio: float
    steps_done: int
    pruned: bool
    forecast: list[dict[str, object]]


def _forecast(
    drift: float, high: float, gain: float, measured: bool = False
) -> list[dict[str, object]]:
    return [
        {
            "eval_set": "pt",
            "role": "pretraining",
            "steps": 300,
            "drift": drift,
            "low": drift - 0.01,
            "high": high,
            "measured": measured,
            "method": "fit",
        },
        {
            "eval_set": "math",
            "role": "finetuning",
            "steps": 300,
            "drift": -gain,
            "low": -gain,
            "high": -gain,
            "measured": measured,
            "method": "fit",
        },
    ]


def test_trajectory_basis_picks_the_smallest_ratio_within_tolerance() -> None:
    s = spec(trajectory={"steps": 100, "measure_every": 10}, planned_steps=300, tolerance=0.02)
    trajectories = [
        Traj(0.0, 100, False, _forecast(0.25, 0.3, 0.9)),
        Traj(0.25, 100, False, _forecast(0.015, 0.025, 0.8)),  # point inside, interval not
        Traj(0.5, 100, False, _forecast(0.005, 0.012, 0.6)),
        Traj(0.75, 40, True, _forecast(0.5, 0.6, 0.3)),
    ]
    # Default: the point forecast decides; the interval reaching past the tolerance is a warning.
    rec = recommend(s, curves(), trajectories=trajectories)
    assert rec.basis == "trajectory" and rec.ratio == 0.25
    assert rec.forecast_drift == pytest.approx(0.015)
    assert rec.forecast_drift_high == pytest.approx(0.025)
    assert [v.within_tolerance for v in rec.trajectories] == [False, True, True, False]
    assert "trajectory's forecast keeps" in rec.reason
    assert any("cautious answer" in w and "is ratio 0.5" in w for w in rec.warnings)
    assert rec.confidence == "low"
    # The cautious rule: every interval's upper end within the tolerance.
    s = spec(
        trajectory={"steps": 100, "measure_every": 10, "accept": "interval"},
        planned_steps=300,
        tolerance=0.02,
    )
    rec = recommend(s, curves(), trajectories=trajectories)
    assert rec.basis == "trajectory" and rec.ratio == 0.5
    assert rec.forecast_drift == pytest.approx(0.005)
    assert rec.forecast_drift_high == pytest.approx(0.012)
    assert rec.finetuning_gain == pytest.approx(0.6)
    assert [v.within_tolerance for v in rec.trajectories] == [False, False, True, False]
    assert "0.5" in rec.reason and "300 steps" in rec.reason
    assert "trajectory's forecast interval keeps" in rec.reason
    assert not any("cautious answer" in w for w in rec.warnings)


def test_trajectory_basis_overrides_an_optimistic_first_step() -> None:
    s = spec(trajectory={"steps": 100, "measure_every": 10}, learning_rate=1e-7)
    trajectories = [Traj(r, 100, False, _forecast(0.1, 0.12, 0.5)) for r in (0.0, 0.25)]
    trajectories.append(Traj(0.5, 100, False, _forecast(0.0, 0.01, 0.4)))
    rec = recommend(s, curves(), trajectories=trajectories)
    assert rec.flat_ratio == 0.0  # the first step alone looks flat at 0
    assert rec.ratio == 0.5
    assert any("first-step screen alone would have answered 0" in w for w in rec.warnings)


def test_trajectory_basis_with_none_within_or_all_pruned() -> None:
    s = spec(trajectory={"steps": 100, "measure_every": 10})
    over = [Traj(r, 100, False, _forecast(0.1 + r, 0.2 + r, 0.5)) for r in (0.0, 0.5)]
    rec = recommend(s, curves(), trajectories=over)
    assert rec.ratio is None and rec.basis == "trajectory"
    assert "least drift was ratio 0" in rec.reason
    pruned = [Traj(r, 20, True, _forecast(0.3, 0.4, 0.1)) for r in (0.0, 0.5)]
    rec = recommend(s, curves(), trajectories=pruned)
    assert rec.ratio is None and "Every trajectory (0, 0.5) was pruned" in rec.reason


def test_a_pretraining_set_the_model_memorised_can_be_left_unguarded() -> None:
    body = {
        "trajectory": {"steps": 100, "measure_every": 10},
        "pretraining": {"name": "pt", "path": "pt", "within_tolerance": False},
        "retention": [{"name": "heldout", "path": "h"}],
    }
    s = spec(**body)
    held = {
        "eval_set": "heldout",
        "role": "retention",
        "steps": 300,
        "drift": 0.0,
        "low": -0.01,
        "high": 0.01,
        "measured": False,
        "method": "fit",
    }
    # The training rows drift (lost memorisation) while held-out text stays flat.
    rows = [Traj(0.25, 100, False, [*_forecast(0.06, 0.08, 0.5), held])]
    rec = recommend(s, curves(), trajectories=rows)
    assert rec.ratio == 0.25 and rec.forecast_drift == 0.0
    guarded = recommend(spec(trajectory=body["trajectory"]), curves(), trajectories=rows)
    assert guarded.ratio is None


def test_an_unguarded_pretraining_set_needs_a_retention_set() -> None:
    with pytest.raises(ValueError, match="add a held-out sample as a retention set"):
        spec(pretraining={"name": "pt", "path": "pt", "within_tolerance": False})
