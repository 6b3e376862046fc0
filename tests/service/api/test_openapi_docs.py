"""The API's own description: every request field explained, a runnable example body."""

from __future__ import annotations

from typing import Any

from contract.spec import SweepSpec
from service.api.main import create_app
from service.config import Settings


def _spec_components(schema: dict[str, Any]) -> dict[str, Any]:
    """SweepSpec's component and every component it reaches."""
    components = schema["components"]["schemas"]
    todo, seen = ["SweepSpec"], {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = components[name]
        text = str(components[name])
        todo += [ref.split("'")[0] for ref in text.split("#/components/schemas/")[1:]]
    return seen


def test_every_request_field_has_a_description_and_the_body_an_example(tmp_path: Any) -> None:
    schema = create_app(Settings(home=tmp_path)).openapi()
    components = _spec_components(schema)
    assert {"SweepSpec", "ModelRef", "DataRef", "FinetuneRef", "AdamWSpec"} <= set(components)
    undescribed = [
        f"{model}.{field}"
        for model, component in components.items()
        for field, prop in component.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert undescribed == []
    examples = components["SweepSpec"]["examples"]
    assert examples and all(SweepSpec.model_validate(body) for body in examples)


def test_the_rate_grid_and_reuse_models_and_routes_are_described(tmp_path: Any) -> None:
    # Issue 11, parts 2 and 5: every field of the new request and response models, every route.
    schema = create_app(Settings(home=tmp_path)).openapi()
    components = schema["components"]["schemas"]
    new = (
        "AddCandidates",
        "SweepComparison",
        "RatioComparison",
        "SetSide",
        "SpecDifference",
        "RateRegion",
        "RatePoint",
        "RatioMaxRate",
        "RateBest",
        "LearningRateRange",
    )
    undescribed = [
        f"{model}.{field}"
        for model in new
        for field, prop in components[model].get("properties", {}).items()
        if not prop.get("description")
    ]
    assert undescribed == []
    spec = components["SweepSpec"]["properties"]
    assert all(spec[f]["description"] for f in ("learning_rates", "warm_start_from"))
    add = schema["paths"]["/v1/sweeps/{sweep_id}/candidates"]["post"]
    compare = schema["paths"]["/v1/sweeps/compare"]["get"]
    assert add["description"] and compare["description"]
    assert {"202", "200", "404", "409", "422"} <= set(add["responses"])
    assert [p["name"] for p in compare["parameters"]][:2] == ["a", "b"]
    assert all(p["description"] for p in compare["parameters"][:2])
