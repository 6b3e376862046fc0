"""`sharpmix keys` and `sharpmix submit` against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from service.config import get_settings
from service.db import tenants
from sharpmix.cli import main
from tests.service.support import Api, finish, sweep_body

pytestmark = pytest.mark.db


def create_key(capsys: pytest.CaptureFixture[str], tenant: str) -> str:
    assert main(["keys", "create", "--tenant", tenant]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.usefixtures("environment")
def test_keys_create_prints_a_working_key_last_and_revoke_stops_it(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    key = create_key(capsys, "team-a")
    assert key.startswith("smx_")
    with api.session() as session:
        assert tenants.authenticate(session, key).name == "team-a"
    assert main(["keys", "revoke", key.split("_")[1]]) == 0
    headers = {"Authorization": f"Bearer {key}"}
    assert api.client.get("/v1/sweeps", headers=headers).status_code == 401
    assert main(["keys", "revoke", "0123456789abcdef"]) == 2
    assert "no API key" in capsys.readouterr().err


@pytest.mark.usefixtures("environment")
def test_submit_prints_json_and_waits_for_the_result(
    api: Api,
    live_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = create_key(capsys, "team-a")
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(sweep_body()))
    args = ["submit", str(spec_file), "--url", live_url, "--idempotency-key", "nightly"]
    assert main([*args, "--api-key", key]) == 0
    queued = json.loads(capsys.readouterr().out)
    assert (queued["sweep"]["state"], queued["recommendation"]) == ("queued", None)

    finish(api, queued["sweep"]["id"], ratio=0.25)
    # The key from the environment, and --wait: the replay is the finished sweep.
    monkeypatch.setenv("SHARPMIX_API_KEY", key)
    get_settings.cache_clear()
    assert main([*args, "--wait"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["sweep"]["id"] == queued["sweep"]["id"]
    assert done["recommendation"]["ratio"] == 0.25


@pytest.mark.usefixtures("environment")
def test_submit_fails_on_a_cancelled_sweep_and_on_a_refusal(
    api: Api, live_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = create_key(capsys, "team-a")
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(sweep_body()))
    base = ["submit", str(spec_file), "--url", live_url, "--api-key", key]
    assert main([*base, "--idempotency-key", "k"]) == 0
    sweep_id = json.loads(capsys.readouterr().out)["sweep"]["id"]
    headers = {"Authorization": f"Bearer {key}"}
    assert api.client.post(f"/v1/sweeps/{sweep_id}/cancel", headers=headers).status_code == 200
    assert main([*base, "--idempotency-key", "k", "--wait"]) == 1
    assert "cancelled" in capsys.readouterr().err

    spec_file.write_text(yaml.safe_dump(sweep_body(ratios=[0.5, 2.0])))
    assert main(base) == 2
    assert "422: body.ratios.list.1: " in capsys.readouterr().err
    assert main([*base[:-2], "--api-key", "smx_wrong"]) == 2
    assert "401" in capsys.readouterr().err
