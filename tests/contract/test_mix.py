"""k-domain mixes in the contract: what a spec may ask for, each refusal naming the field, and
the search's map from uniform numbers into the bounded simplex."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from contract.errors import LimitError
from contract.mix import (
    Candidate,
    domains,
    explicit_mix,
    project,
    ratio_weights,
    search_dimensions,
    searched_mix,
)
from contract.spec import Limits, SweepSpec, check_limits


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"path": "m"},
        "pretraining": [{"name": "web", "path": "w"}, {"name": "code", "path": "c", "max": 0.3}],
        "finetuning": [{"name": "math", "path": "f", "min": 0.2}],
        "mixes": [{"web": 0.5, "code": 0.1, "math": 0.4}, {"web": 0.1, "math": 0.9}],
        "learning_rate": 1e-4,
        "seq_len": 16,
        "batch_tokens": 64,
    }
    base.update(changes)
    return base


def test_a_k3_spec_lists_its_domains_and_mixes() -> None:
    spec = SweepSpec.model_validate(body())
    assert [d.field for d in domains(spec)] == ["pretraining[0]", "pretraining[1]", "finetuning[0]"]
    assert spec.slots == 2 and spec.role("code") == "pretraining" and spec.guarded("code")
    assert explicit_mix(spec, 1) == {"web": 0.1, "code": 0.0, "math": 0.9}
    candidate = Candidate.of_mix(spec, explicit_mix(spec, 0))
    assert candidate.ratio == pytest.approx(0.6) and candidate.weights is not None
    assert candidate.weights["code"] == 0.1


def test_listed_mixes_each_get_a_trajectory() -> None:
    spec = SweepSpec.model_validate(body(trajectory={"steps": 4, "measure_every": 2}))
    assert spec.slots == 2 and spec.trajectory_slots == 2


def test_the_ratio_form_splits_by_relative_weights() -> None:
    spec = SweepSpec.model_validate(
        body(
            pretraining=[{"name": "web", "path": "w", "weight": 3}, {"name": "code", "path": "c"}],
            finetuning=[{"name": "math", "path": "f"}, {"name": "chat", "path": "h", "weight": 3}],
            mixes=None,
            ratios=[0.4],
        )
    )
    assert ratio_weights(spec, 0.4) == pytest.approx(
        {"web": 0.3, "code": 0.1, "math": 0.15, "chat": 0.45}
    )


def test_a_spec_without_k_domain_fields_keeps_its_digest() -> None:
    two = body(
        pretraining={"name": "web", "path": "w"},
        finetuning=[{"name": "math", "path": "f", "weight": 2}],
        mixes=None,
        ratios=[0.1, 0.5],
    )
    # The digest of this body before k-domain mixes existed (computed on main at 465bea5).
    spec = SweepSpec.model_validate(two)
    assert "mixes" not in spec.canonical_json() and '"min"' not in spec.canonical_json()
    assert spec.sha256() == "f50a7ce41878cbff21435af46e69cf67fc4973d94446b9172bb473374f7fce2e"


@pytest.mark.parametrize(
    ("changes", "loc", "message"),
    [
        ({"mixes": [{"web": 0.5, "math": 0.4}]}, ("mixes", 0), "sum to 0.9"),
        ({"mixes": [{"web": 1.2, "math": -0.2}]}, ("mixes", 0, "web"), "less than or equal"),
        ({"mixes": [{"web": 0.5, "wiki": 0.1, "math": 0.4}]}, (), "'mixes[0]' names 'wiki'"),
        ({"mixes": [{"web": 0.2, "code": 0.5, "math": 0.3}]}, (), "outside its bounds [0, 0.3]"),
        ({"mixes": [{"web": 0.5, "math": 0.5}, {"math": 0.5, "web": 0.5}]}, (), "repeats"),
        ({"mixes": []}, ("mixes",), "at least 1"),
        ({"ratios": [0.5]}, (), "exactly one of 'ratios'"),
        ({"mixes": None, "ratios": [0.5]}, (), "'pretraining[1]', 'finetuning[0]' set 'min'"),
        (
            {"finetuning": [{"name": "math", "path": "f", "min": 0.6, "max": 0.4}]},
            ("finetuning", 0),
            "'min' (0.6) is above 'max' (0.4)",
        ),
        (
            {"finetuning": [{"name": "math", "path": "f", "share": 0.5, "min": 0.1}]},
            ("finetuning", 0),
            "not both",
        ),
        (
            {"finetuning": [{"name": "math", "path": "f", "min": 0.8}], "mixes": None}
            | {
                "mix_search": {"trials": 4},
                "pretraining": [{"name": "web", "path": "w", "min": 0.3}],
            },
            (),
            "sum to 1.1, above 1",
        ),
        (
            {
                "pretraining": [
                    {"name": "web", "path": "w", "max": 0.2},
                    {"name": "code", "path": "c", "max": 0.3},
                ]
            }
            | {"finetuning": [{"name": "math", "path": "f", "max": 0.4}]},
            (),
            "sum to 0.9, below 1",
        ),
        (
            {"pretraining": [{"name": "web", "path": "w"}, {"name": "web", "path": "c"}]},
            (),
            "used twice: web",
        ),
        (
            {"mixes": None, "mix_search": {"trials": 3}}
            | {"pretraining": {"name": "web", "path": "w", "share": 0.3}}
            | {"finetuning": [{"name": "math", "path": "f"}]},
            (),
            "nothing to search",
        ),
        (
            {"trajectory": {"steps": 4, "measure_every": 2}, "mixes": None}
            | {"mix_search": {"trials": 3}},
            (),
            "give 'mixes' instead of 'mix_search'",
        ),
        ({"pretraining": []}, ("pretraining", "list"), "at least 1"),
    ],
)
def test_bad_mixes_are_refused_naming_the_field(
    changes: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        SweepSpec.model_validate(body(**changes))
    errors = caught.value.errors()
    assert any(e["loc"] == loc and message in e["msg"] for e in errors), errors


def test_the_operator_limits_bound_mixes_and_trials() -> None:
    limits = Limits(16, 1 << 20, 4096, 1, 5000, 3, 16)
    with pytest.raises(LimitError) as caught:
        check_limits(SweepSpec.model_validate(body()), limits)
    assert caught.value.field == "mixes" and "SHARPMIX_MAX_RATIOS" in caught.value.message
    search = SweepSpec.model_validate(body(mixes=None, mix_search={"trials": 4}))
    with pytest.raises(LimitError) as caught:
        check_limits(search, limits)
    assert caught.value.field == "mix_search.trials"


def test_searched_mixes_lie_in_the_bounds_and_sum_to_one() -> None:
    spec = SweepSpec.model_validate(
        body(
            mixes=None,
            mix_search={"trials": 8},
            finetuning=[
                {"name": "math", "path": "f", "min": 0.2},
                {"name": "chat", "path": "h", "share": 0.1},
                {"name": "qa", "path": "q", "weight": 3},
                {"name": "faq", "path": "a"},
            ],
        )
    )
    # Free: code (bounded), math (bounded), web (the unbounded pre-training source), qa + faq
    # (the unbounded fine-tuning sets, 3:1); chat is fixed.
    assert search_dimensions(spec) == 3
    rng = random.Random(0)
    bounds = {d.name: (d.low, d.high) for d in domains(spec)}
    corners = [[0.0] * 3, [1.0] * 3, [0.999, 0.0, 0.5]]
    for u in corners + [[rng.random() for _ in range(3)] for _ in range(200)]:
        mix = searched_mix(spec, u)
        assert sum(mix.values()) == pytest.approx(1.0, abs=1e-9)
        for name, share in mix.items():
            low, high = bounds[name]
            assert low - 1e-9 <= share <= high + 1e-9, (u, mix)
        assert mix["chat"] == pytest.approx(0.1)
        assert mix["qa"] == pytest.approx(3 * mix["faq"])


def test_stick_breaking_of_uniform_numbers_covers_the_simplex_evenly() -> None:
    spec = SweepSpec.model_validate(
        body(
            mixes=None,
            mix_search={"trials": 8},
            pretraining=[{"name": "web", "path": "w", "max": 1}],
            finetuning=[
                {"name": "math", "path": "f", "max": 1},
                {"name": "qa", "path": "q", "max": 1},
            ],
        )
    )
    rng = random.Random(1)
    draws = [searched_mix(spec, [rng.random(), rng.random()]) for _ in range(4000)]
    # Uniform on the 2-simplex: each coordinate has mean 1/3 and P(w > 1/2) = 1/4.
    for name in ("web", "math", "qa"):
        values = [d[name] for d in draws]
        assert sum(values) / len(values) == pytest.approx(1 / 3, abs=0.02)
        assert sum(v > 0.5 for v in values) / len(values) == pytest.approx(0.25, abs=0.03)


def test_project_is_the_nearest_bounded_point() -> None:
    point = project([0.7, 0.2, 0.1], [0.0, 0.0, 0.2], [0.5, 1.0, 1.0])
    assert point == pytest.approx([0.5, 0.3, 0.2])
    assert project([0.2, 0.3, 0.5], [0.0] * 3, [1.0] * 3) == pytest.approx([0.2, 0.3, 0.5])


def test_the_readme_k_domain_example_is_valid() -> None:
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### k-domain mixes", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = SweepSpec.model_validate(
        {**yaml.safe_load(block), "model": {"path": "m"}, "learning_rate": 3e-5}
    )
    assert spec.slots == 3 and [d.name for d in domains(spec)] == ["dclm", "code", "math"]


def test_a_candidate_keeps_its_weights_through_copies_and_pickles() -> None:
    # The worker over several devices sends candidates to its other ranks as pickles.
    import copy
    import pickle

    spec = SweepSpec.model_validate(body())
    mix = Candidate.of_mix(spec, explicit_mix(spec, 0))
    for other in (copy.copy(mix), copy.deepcopy(mix), pickle.loads(pickle.dumps(mix))):
        assert isinstance(other, Candidate) and other == mix and other.weights == mix.weights
        assert other.ratio == mix.ratio


@pytest.mark.parametrize(
    "extra",
    [
        {"learning_rates": [1e-5, 1e-4]},
        {"learning_rate_range": {"low": 1e-5, "high": 1e-3, "points": 3}},
        {"warm_start_from": "0123456789abcdef0123456789abcdef"},
    ],
)
def test_rate_grids_and_warm_starts_are_for_ratio_sweeps(extra: dict[str, Any]) -> None:
    # Both read a sweep by its ratio; two mixes of one ratio would be one point to them.
    with pytest.raises(ValidationError) as raised:
        SweepSpec.model_validate(body(**extra))
    assert next(iter(extra)) in str(raised.value) and "'ratios'" in str(raised.value)
    ratio_sweep = body(**extra, mixes=None, ratios=[0.2, 0.5])
    ratio_sweep["pretraining"] = [{"name": "web", "path": "w"}, {"name": "code", "path": "c"}]
    ratio_sweep["finetuning"] = [{"name": "math", "path": "f"}]
    SweepSpec.model_validate(ratio_sweep)
