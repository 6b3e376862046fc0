"""`make demo`'s sweep over HTTP (the asset build is tested in tests/workers/data/test_demo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings
from sharpmix.demo import demo_spec, demo_sweep
from tests.conftest import SweepAssets

pytestmark = [pytest.mark.db, pytest.mark.slow]


def test_demo_spec_is_a_valid_sweep(tmp_path: Path) -> None:
    from contract.spec import SweepSpec

    spec = SweepSpec.model_validate(demo_spec(tmp_path / "m", tmp_path / "g", tmp_path / "a"))
    assert spec.ratios == "auto" and spec.objective == "flat_pretraining"
    assert spec.trajectory is not None and spec.trajectory_slots == 2


def test_demo_sweep_prints_table_recommendation_and_plot(
    sweep_assets: SweepAssets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(home=tmp_path / "home", allowed_roots=[sweep_assets.root], device="cpu")
    spec = sweep_assets.spec(ratios=[0.0, 1.0])
    assert demo_sweep(settings, spec, plot_dir=tmp_path) == 0
    out = capsys.readouterr().out
    assert "recommended pre-training ratio:" in out
    assert out.count(" general ") == 2 and out.count(" math ") == 2
    plot = Path(out.split("plot: ", 1)[1].split()[0])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_sweep_shows_trajectories(
    sweep_assets: SweepAssets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(home=tmp_path / "home", allowed_roots=[sweep_assets.root], device="cpu")
    trajectory = {"steps": 4, "measure_every": 2}
    spec = sweep_assets.spec(ratios=[0.0, 1.0], batches=1, trajectory=trajectory, planned_steps=8)
    assert demo_sweep(settings, spec, plot_dir=tmp_path) == 0
    out = capsys.readouterr().out
    assert "basis trajectory" in out and "forecast to 8" in out
    drawn = Path(out.split("trajectory plot: ", 1)[1].split()[0])
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_sweep_exits_non_zero(sweep_assets: SweepAssets, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", allowed_roots=[sweep_assets.root], device="cpu")
    spec = sweep_assets.spec(ratios=[0.5], batches=64, batch_tokens=4096)  # more than the data
    assert demo_sweep(settings, spec, plot_dir=tmp_path) == 1


def test_the_example_demo_spec_is_the_demo_s_request() -> None:
    import yaml

    example = yaml.safe_load((Path(__file__).parents[2] / "examples" / "demo.yaml").read_text())
    rel = Path("demo")
    assert example == demo_spec(rel / "model", rel / "general.jsonl", rel / "math.jsonl")


def test_the_k3_demo_sweep_names_the_recommended_mix(
    sweep_assets: SweepAssets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from contract.spec import SweepSpec
    from sharpmix.demo import DEMO_MIXES, demo_mix_spec, demo_sweeps

    root = sweep_assets.root
    spec = demo_mix_spec(
        root / sweep_assets.model_dir, root / sweep_assets.general, root / "held.jsonl", root / "m"
    )
    assert SweepSpec.model_validate(spec).slots == len(DEMO_MIXES)
    # The same request on the test's tiny assets (held-out text: the general file once more).
    spec |= {
        "pretraining": [
            {"name": "general", "path": sweep_assets.general},
            {"name": "general_heldout", "path": sweep_assets.general, "max": 0.5},
        ],
        "finetuning": [{"name": "math", "path": sweep_assets.math}],
        "model": {"path": sweep_assets.model_dir},
        "seq_len": 32,
        "batch_tokens": 512,
    }
    settings = Settings(home=tmp_path / "home", allowed_roots=[root], device="cpu")
    assert demo_sweeps(settings, [spec], plot_dir=tmp_path) == 0
    out = capsys.readouterr().out
    assert "k = 3 mixes" in out and "recommended mix:" in out
    assert "3 backward passes" in out  # one per source and the fine-tuning set, for three mixes
