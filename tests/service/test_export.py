"""Exports of the recommended mix: the conversion from token to example shares, every format
parsed back the way its consumer reads it, and the route's errors."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import yaml

from contract.spec import SweepSpec
from contract.states import SweepState
from service.export import FORMATS, ExportError, render_export, shares
from tests.service.support import Api, finish, set_state, sweep_body

# web documents are 200 tokens long on average, code documents 50: at a token share of 0.25 for
# web, examples are drawn 1 web : 12 code ((0.25/200) : (0.75/50)).
SOURCES = {"web": {"tokens": 20_000, "documents": 100}, "code": {"tokens": 5_000, "documents": 100}}


def _spec(**changes: Any) -> SweepSpec:
    return SweepSpec.model_validate(sweep_body(**changes))


def _render(fmt: str, ratio: float = 0.25, sources: Any = SOURCES, **changes: Any) -> Any:
    return render_export(
        fmt, _spec(**changes), sweep_id="s1", ratio=ratio, basis="trajectory", sources=sources
    )


@pytest.mark.unit
def test_example_shares_follow_the_measured_lengths() -> None:
    rows, warnings = shares(_spec(), 0.25, SOURCES)
    assert warnings == []
    assert [r.name for r in rows] == ["web", "code"]
    assert [r.token_share for r in rows] == [0.25, 0.75]
    assert rows[0].example_share == pytest.approx(1 / 13)
    assert rows[1].example_share == pytest.approx(12 / 13)


@pytest.mark.unit
def test_fine_tuning_weights_split_the_rest() -> None:
    finetuning = [
        {"name": "code", "path": "data/code.jsonl", "weight": 3.0},
        {"name": "math", "path": "data/web.jsonl", "weight": 1.0},
    ]
    rows, _ = shares(_spec(finetuning=finetuning), 0.2, None)
    assert [r.token_share for r in rows] == pytest.approx([0.2, 0.6, 0.2])
    assert all(r.example_share is None for r in rows)


@pytest.mark.unit
def test_every_format_parses_back_to_the_shares() -> None:
    hf = json.loads(_render("hf").content)
    assert hf["function"] == "datasets.interleave_datasets"
    assert [d["name"] for d in hf["datasets"]] == ["web", "code"]
    assert hf["probabilities"] == pytest.approx([1 / 13, 12 / 13], abs=1e-6)
    assert math.fsum(hf["probabilities"]) == 1.0
    assert "example" in hf["note"] and "token share" in hf["note"]

    lf = yaml.safe_load(_render("llamafactory").content)
    assert lf["dataset"] == "web,code" and lf["mix_strategy"] == "interleave_under"
    probs = [float(p) for p in lf["interleave_probs"].split(",")]
    assert probs == pytest.approx([1 / 13, 12 / 13], abs=1e-6)

    ax = yaml.safe_load(_render("axolotl").content)
    assert [d["path"] for d in ax["datasets"]] == ["data/web.jsonl", "data/code.jsonl"]
    assert [d["weight"] for d in ax["datasets"]] == pytest.approx([1 / 13, 12 / 13], abs=1e-6)

    tt = yaml.safe_load(_render("torchtune").content)
    assert tt["dataset"]["weights"] == pytest.approx([1 / 13, 12 / 13], abs=1e-6)

    # Token-share consumers take the sweep's own numbers.
    olmo = yaml.safe_load(_render("olmo-core").content)
    configs = olmo["source_mixture_config"]["source_configs"]
    assert [(c["source_name"], c["target_ratio"]) for c in configs] == [
        ("web", 0.25),
        ("code", 0.75),
    ]
    megatron = _render("megatron").content
    assert "token shares" in megatron
    line = next(row for row in megatron.splitlines() if not row.startswith("#"))
    assert line.split() == ["--data-path", "0.25", "data/web.jsonl", "0.75", "data/code.jsonl"]

    generic = json.loads(_render("json").content)
    assert [s["token_share"] for s in generic["sources"]] == [0.25, 0.75]
    assert generic["sources"][0]["tokens_per_example"] == 200.0


@pytest.mark.unit
def test_a_zero_share_is_left_out_with_a_warning() -> None:
    exported = _render("hf", ratio=0.0)
    assert json.loads(exported.content)["probabilities"] == [1.0]
    assert exported.warnings == ["web has share 0 at ratio 0 and is left out of the file"]
    assert "warning: web has share 0" in _render("llamafactory", ratio=0.0).content


@pytest.mark.unit
def test_refusals_say_what_to_change() -> None:
    with pytest.raises(ExportError, match=r"token counts.*olmo-core, megatron or json"):
        _render("hf", sources=None)
    assert "0.25" in _render("olmo-core", sources=None).content  # token shares need no counts
    with pytest.raises(ExportError, match="format must be one of"):
        _render("yaml")
    with pytest.raises(ExportError, match=r"ratio must lie in \[0, 1\]"):
        _render("json", ratio=1.5)
    assert set(FORMATS) >= {"hf", "llamafactory", "axolotl", "torchtune", "olmo-core", "megatron"}


@pytest.mark.db
def test_route_exports_the_answer_or_an_asked_ratio(api: Api) -> None:
    sweep_id = api.submit()["id"]
    path = f"/v1/sweeps/{sweep_id}/export"
    early = api.client.get(path, headers=api.headers)
    assert early.status_code == 409 and "is queued" in early.json()["detail"]

    set_state(api, sweep_id, SweepState.running, sources=SOURCES)
    finish(api, sweep_id, ratio=0.25)
    answer = api.client.get(path, params={"format": "hf"}, headers=api.headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert f"sharpmix-{sweep_id}-hf.json" in answer.headers["content-disposition"]
    assert answer.json()["probabilities"] == pytest.approx([1 / 13, 12 / 13], abs=1e-6)

    asked = api.client.get(path, params={"format": "olmo-core", "ratio": 0.5}, headers=api.headers)
    assert asked.status_code == 200
    assert "a ratio chosen at export" in asked.text and "target_ratio: 0.5" in asked.text

    for params in ({"format": "csv"}, {"ratio": 2}):
        bad = api.client.get(path, params=params, headers=api.headers)
        assert bad.status_code == 422, params
    other = api.client.get(path, headers=api.key_for("globex"))
    assert other.status_code == 404


@pytest.mark.db
def test_route_refuses_a_sweep_that_recommends_nothing(api: Api) -> None:
    sweep_id = api.submit()["id"]
    finish(api, sweep_id, ratio=0.25)
    with api.session() as session:
        from service.db.models import Sweep

        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        sweep.recommendation = {**sweep.recommendation, "ratio": None, "reason": "none is flat"}
        session.commit()
    path = f"/v1/sweeps/{sweep_id}/export"
    refused = api.client.get(path, headers=api.headers)
    assert refused.status_code == 409
    assert "recommends no ratio (none is flat)" in refused.json()["detail"]
    no_counts = api.client.get(path, params={"format": "hf", "ratio": 0.1}, headers=api.headers)
    assert no_counts.status_code == 409 and "token counts" in no_counts.json()["detail"]
