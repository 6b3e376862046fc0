"""The sweep spec: the README's example is valid, and the spec's own rules hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from service.config import Settings
from service.errors import InvalidRequestError
from service.spec import SweepSpec, check_limits, resolve_under_roots

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


def test_limits_name_the_field(tmp_path: Path) -> None:
    spec = SweepSpec.model_validate(example())
    with pytest.raises(InvalidRequestError) as caught:
        check_limits(spec, Settings(home=tmp_path, max_batch_tokens=1024))
    assert caught.value.field == "batch_tokens"
    assert "SHARPMIX_MAX_BATCH_TOKENS" in caught.value.message


def test_paths_stay_inside_the_roots(tmp_path: Path) -> None:
    inside, outside = tmp_path / "root", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (inside / "data.jsonl").write_text("{}\n")
    (outside / "secret.jsonl").write_text("{}\n")
    (inside / "link").symlink_to(outside / "secret.jsonl")
    roots = (inside,)
    assert resolve_under_roots("data.jsonl", roots, field="f") == inside / "data.jsonl"
    for bad in ("../elsewhere/secret.jsonl", str(outside / "secret.jsonl"), "link", "missing"):
        with pytest.raises(InvalidRequestError):
            resolve_under_roots(bad, roots, field="pretraining.path")
