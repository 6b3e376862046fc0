"""`sharpmix sweeps ...`, `--version`, completion, exit codes and the first-run fixes, against a
real server (uvicorn on a free port) and a real database."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from contract.states import SweepState
from service.config import get_settings
from sharpmix.cli import main
from tests.service.support import Api, add_measurement, finish, set_state

pytestmark = pytest.mark.db


@pytest.fixture
def finished(api: Api) -> str:
    """A succeeded sweep of tenant ``acme`` with measurements for two of its ratios."""
    sweep_id: str = api.submit()["id"]
    for ratio, eta in ((0.0, 2e-4), (0.25, 1.5e-3)):
        for eval_set in ("web", "code", "wiki"):
            add_measurement(api, sweep_id, ratio, eval_set, eta)
    finish(api, sweep_id, ratio=0.25)
    return sweep_id


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("environment")
def test_every_verb_prints_a_table_or_json(
    api: Api, live_url: str, finished: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = api.headers["Authorization"].split()[1]
    server = ["--url", live_url, "--api-key", key]

    code, out, _ = run(capsys, "sweeps", "list", *server)
    assert code == 0
    header, rule, row = out.splitlines()[:3]
    assert header.split()[:2] == ["id", "state"] and set(rule) <= {"-", " "}
    assert row.split()[:2] == [finished, "succeeded"] and " 0.25 " in f" {row} "
    code, out, _ = run(capsys, "sweeps", "list", *server, "--json")
    assert [s["id"] for s in json.loads(out)["items"]] == [finished]

    code, out, _ = run(capsys, "sweeps", "show", finished, *server)
    assert code == 0 and "succeeded" in out and "forwards" in out
    assert (
        json.loads(run(capsys, "sweeps", "show", finished, *server, "--json")[1])["id"] == finished
    )

    code, out, _ = run(capsys, "sweeps", "trials", finished, *server)
    assert code == 0 and len(out.splitlines()) == 2 + 6  # header, rule, 2 ratios x 3 sets
    trials = json.loads(run(capsys, "sweeps", "trials", finished, *server, "--json")[1])
    assert {(t["ratio"], t["eval_set"]) for t in trials} >= {(0.25, "wiki"), (0.0, "web")}

    code, out, _ = run(capsys, "sweeps", "recommendation", finished, *server)
    assert code == 0 and out.startswith("recommended pre-training ratio: 0.25")
    rec = json.loads(run(capsys, "sweeps", "recommendation", finished, *server, "--json")[1])
    assert rec["ratio"] == 0.25

    target = tmp_path / "plot.png"
    code, out, _ = run(capsys, "sweeps", "plot", finished, *server, "-o", str(target), "--json")
    assert code == 0 and json.loads(out)["path"] == str(target)
    assert target.read_bytes()[:4] == b"\x89PNG"

    code, out, _ = run(capsys, "sweeps", "export", finished, *server, "--format", "olmo-core")
    assert code == 0 and "target_ratio: 0.25" in out and "token share" in out
    target = tmp_path / "mix.json"
    code, out, _ = run(capsys, "sweeps", "export", finished, *server, "-o", str(target), "--json")
    assert code == 0 and json.loads(out)["format"] == "json"
    assert [s["token_share"] for s in json.loads(target.read_text())["sources"]] == [0.25, 0.75]
    code, _, err = run(capsys, "sweeps", "export", finished, *server, "--format", "hf")
    assert code != 0 and "token counts" in err  # this sweep's worker recorded none

    code, out, err = run(capsys, "sweeps", "wait", finished, *server)
    assert code == 0 and "succeeded" in out
    assert err.count(f"sweep {finished}") == 1 and "ratios" in err and "succeeded" in err


@pytest.mark.usefixtures("environment")
def test_exit_codes_say_what_happened(
    api: Api, live_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = api.headers["Authorization"].split()[1]
    server = ["--url", live_url, "--api-key", key]
    queued = api.submit()["id"]

    code, _, err = run(capsys, "sweeps", "recommendation", queued, *server)
    assert code == 5 and "409" in err  # not ready yet
    code, _, err = run(capsys, "sweeps", "wait", queued, *server, "--timeout", "0.5")
    assert code == 4 and f"sharpmix sweeps wait {queued}" in err
    code, _, err = run(capsys, "sweeps", "show", "no-such-sweep", *server)
    assert code == 2 and "404" in err
    code, _, err = run(capsys, "sweeps", "show", queued, "--url", live_url, "--api-key", "smx_x_y")
    assert code == 2 and "SHARPMIX_DATABASE_URL" in err  # the 401 says where keys live
    code, _, err = run(capsys, "sweeps", "list", "--url", "http://127.0.0.1:9", "--api-key", key)
    assert code == 3 and "cannot reach" in err

    code, out, _ = run(capsys, "sweeps", "cancel", queued, *server, "--json")
    assert code == 0 and json.loads(out)["cancel_requested"] is True
    set_state(api, queued, SweepState.cancelled, error="cancelled by the user")
    code, _, err = run(capsys, "sweeps", "wait", queued, *server)
    assert code == 1 and "cancelled" in err
    assert err.count("0/3 ratios") == 1  # the bar is drawn once for a finished sweep


def test_version_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("sharpmix 0.")
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0 and "recommendation" in script and "sweeps" in script
    bash = shutil.which("bash")
    assert bash is not None
    checked = subprocess.run([bash, "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


def test_db_upgrade_on_a_fresh_home_creates_it_and_keys_name_their_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "not" / "there" / "yet"
    monkeypatch.setenv("SHARPMIX_HOME", str(home))
    monkeypatch.delenv("SHARPMIX_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        code, out, _ = run(capsys, "db", "upgrade")
        assert code == 0 and (home / "sharpmix.db").is_file()
        assert f"database sqlite:///{home}/sharpmix.db at revision" in out
        code, out, err = run(capsys, "keys", "create", "--tenant", "team-b")
        assert code == 0 and f"in database sqlite:///{home}/sharpmix.db" in out
        assert out.splitlines()[-1].startswith("smx_") and "SHARPMIX_DATABASE_URL" in err
    finally:
        get_settings.cache_clear()


def test_demo_assets_prints_where_the_model_and_corpora_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sharpmix.assets.demo import DEMO_VERSION, DemoAssets

    assets = DemoAssets.under(tmp_path)
    assets.manifest_path.parent.mkdir(parents=True)  # a complete build's manifest: reused as is
    assets.manifest_path.write_text(json.dumps({"version": DEMO_VERSION, "seed": 0}))
    monkeypatch.setenv("SHARPMIX_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        code, out, _ = run(capsys, "demo-assets")
        assert code == 0
        for path in (assets.model_dir, assets.general_path, assets.math_path):
            assert f" {path}\n" in out
        assert "examples/demo.yaml" in out
        code, out, _ = run(capsys, "demo-assets", "--json")
        assert json.loads(out)["paths"]["model"] == str(assets.model_dir)
    finally:
        get_settings.cache_clear()
