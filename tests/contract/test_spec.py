"""The sweep spec: the README's example is valid, and the spec's own rules hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from contract.errors import LimitError
from contract.spec import Limits, Role, SweepSpec, check_limits

ROOT = Path(__file__).resolve().parents[2]


def example() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load((ROOT / "examples" / "sweep.yaml").read_text())
    return loaded


def test_example_sweep_is_valid() -> None:
    spec = SweepSpec.model_validate(example())
    assert spec.sequences_per_batch == 32
    # ratios: auto: an eight-ratio first-step screen, then four trajectories around its boundary.
    assert spec.slots == 8 and spec.trajectory_slots == 4
    assert spec.planned_steps == 2000 and spec.lr_at(0) < spec.learning_rate  # warm-up
    assert [ref.name for ref in spec.eval_sets()] == ["dclm", "math"]
    assert spec.role("math") == "finetuning"


def test_fingerprint_ignores_key_order() -> None:
    body = example()
    reordered = dict(reversed(list(body.items())))
    assert SweepSpec.model_validate(body).sha256() == SweepSpec.model_validate(reordered).sha256()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ratios": [0.1, 0.1]}, "twice"),
        ({"ratio_range": {"low": 0.1, "high": 0.9, "trials": 5}}, "exactly one of 'ratios'"),
        ({"batch_tokens": 1000}, "multiple of 'seq_len'"),
        ({"retention": [{"name": "math", "path": "x"}]}, "unique"),
        ({"model": {"path": "m", "revision": "main"}}, "'revision' goes with 'hub_id'"),
    ],
)
def test_inconsistent_specs_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SweepSpec.model_validate({**example(), **change})


def test_limits_name_the_field() -> None:
    spec = SweepSpec.model_validate(example())
    limits = Limits(
        max_batches=64,
        max_batch_tokens=1024,
        max_seq_len=4096,
        max_ratios=64,
        max_trajectory_steps=5000,
        max_trials=128,
        max_eval_sets=16,
    )
    with pytest.raises(LimitError) as caught:
        check_limits(spec, limits)
    assert caught.value.field == "batch_tokens"
    assert "SHARPMIX_MAX_BATCH_TOKENS" in caught.value.message


def test_roles_are_strings_too() -> None:
    spec = SweepSpec.model_validate(example())
    assert spec.role("dclm") is Role.pretraining and spec.role("math") == "finetuning"
    with pytest.raises(KeyError):
        spec.role("nowhere")
