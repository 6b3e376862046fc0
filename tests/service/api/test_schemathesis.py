"""Property-based requests from the served OpenAPI document; no 5xx and every
response conforms to the documented schema, on each backend."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.service.support import Api, add_measurement, finish

pytestmark = [pytest.mark.db, pytest.mark.slow]

# Per operation and generation mode; 16 operations, bounded so both backends stay near a minute.
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda mode: mode.value)
def test_api_conforms_to_its_schema(api: Api, mode: GenerationMode) -> None:
    finished = api.submit()["id"]
    add_measurement(api, finished, 0.0, "web", 1e-2)
    finish(api, finished)
    # Random ids only ever find 404: aim two requests of three at sweeps that exist (one finished
    # with a plot and a recommendation, one queued that a generated cancel may cancel).
    sweep_ids = itertools.cycle([finished, api.submit(seed=1)["id"], "f" * 32])
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 16  # the export, candidates and compare routes included

    for operation in operations:
        inputs = [operation.path_parameters, operation.query, operation.headers, operation.body]
        if mode == GenerationMode.NEGATIVE and not any(len(group) for group in inputs):
            continue  # /healthz and friends take no input to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def conforms(case: schemathesis.Case) -> None:
            if case.path_parameters and "sweep_id" in case.path_parameters:
                case.path_parameters["sweep_id"] = next(sweep_ids)
            case.call_and_validate(
                headers=api.headers, checks=[not_a_server_error, response_schema_conformance]
            )

        conforms()
