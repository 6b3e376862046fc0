"""`sharpmix sweeps add-ratios` and `sharpmix sweeps compare` (issue 11, part 5), and the rate
grid's lines of `sharpmix sweeps recommendation` (part 2), against a real server and database."""

from __future__ import annotations

import json

import pytest

from contract.rates import RateRegion, RatioMaxRate
from contract.recommendation import Recommendation
from contract.states import SweepState
from sharpmix.cli import EXIT_NOT_READY, EXIT_REFUSED, main
from tests.service.support import Api, add_measurement, finish, set_state

pytestmark = pytest.mark.db


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("environment")
def test_add_ratios_and_compare(
    api: Api, live_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ["--url", live_url, "--api-key", api.headers["Authorization"].split()[1]]
    a = api.submit()["id"]
    add_measurement(api, a, 0.25, "web", 2e-3)
    finish(api, a, ratio=0.25)
    b = api.submit(learning_rate=2e-3)["id"]
    add_measurement(api, b, 0.25, "web", 1e-3)

    code, out, _ = run(capsys, "sweeps", "compare", a, b, *server)
    assert code == 0
    assert out.splitlines()[0].startswith(f"a {a}: 0.25 (first_step")
    assert f"b {b}: none yet (queued)" in out and "learning_rate: 0.001 -> 0.002" in out
    row = next(line for line in out.splitlines() if line.startswith("0.25"))
    assert row.split() == ["0.25", "web", "0.002", "0.001", "-0.01", "-0.01", "in", "out"]
    data = json.loads(run(capsys, "sweeps", "compare", a, b, *server, "--json")[1])
    assert data["a"] == a and data["spec_differences"][0]["field"] == "learning_rate"

    code, out, _ = run(capsys, "sweeps", "add-ratios", a, "0.75", "1", *server, "--json")
    assert code == 0 and json.loads(out)["state"] == "running"
    assert json.loads(out)["spec"]["ratios"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    code, _, err = run(capsys, "sweeps", "add-ratios", a, "0.75", *server)
    assert code == EXIT_NOT_READY and "409" in err and "running" in err  # not yet
    set_state(api, a, SweepState.succeeded)
    code, _, err = run(capsys, "sweeps", "add-ratios", a, "0.5", *server)
    assert code == EXIT_REFUSED and "already candidates" in err


@pytest.mark.usefixtures("environment")
def test_the_recommendation_lists_the_largest_stable_rate_per_ratio(
    api: Api, live_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ["--url", live_url, "--api-key", api.headers["Authorization"].split()[1]]
    sweep_id = api.submit(learning_rates=[1e-4, 3e-3])["id"]
    region = RateRegion(
        learning_rates=[1e-4, 1e-3, 3e-3],
        planned_learning_rate=1e-3,
        points=[],
        max_rates=[RatioMaxRate(ratio=0.25, max_stable_lr=1e-3, eta_c_bound=1.6e-3)],
        best_by_rate=[],
        best_ratio_at_planned=0.25,
        trajectory_rate=None,
    )
    stored = finish(api, sweep_id).model_copy(update={"rate_region": region})
    set_state(api, sweep_id, SweepState.succeeded, recommendation=stored.model_dump(mode="json"))
    code, out, _ = run(capsys, "sweeps", "recommendation", sweep_id, *server)
    assert code == 0
    assert "learning rates 0.0001, 0.001, 0.003: largest stable rate per ratio" in out
    assert "ratio 0.25: 0.001 (first-step bound 0.0016)" in out
    assert (
        Recommendation.model_validate(
            json.loads(run(capsys, "sweeps", "recommendation", sweep_id, *server, "--json")[1])
        ).rate_region
        == region
    )
