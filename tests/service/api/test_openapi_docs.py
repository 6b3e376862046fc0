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
