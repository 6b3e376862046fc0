"""What can be checked at submit time is checked then: a 422 naming the field and what to change,
never a 201 followed by a failed sweep, and never a 500 for a path the OS refuses to look at."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.service.support import Api, sweep_body, write_model_dir

pytestmark = pytest.mark.db


def refused(api: Api, **changes: Any) -> tuple[list[Any], str]:
    response = api.client.post("/v1/sweeps", json=sweep_body(**changes), headers=api.headers)
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    return item["loc"], item["msg"]


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"model": {"path": "x" * 300}}, ["body", "model", "path"]),
        ({"model": {"path": "a/" * 2048}}, ["body", "model", "path"]),
        (
            {"pretraining": {"name": "web", "path": "data/" + "y" * 300}},
            ["body", "pretraining", "path"],
        ),
        (
            {"finetuning": [{"name": "code", "path": "z" * 256 + "/f.jsonl"}]},
            ["body", "finetuning", 0, "path"],
        ),
        (
            {"model": {"path": "model", "optimizer_state": "s" * 400}},
            ["body", "model", "optimizer_state"],
        ),
    ],
)
def test_a_path_the_os_refuses_is_a_422_naming_the_field(
    api: Api, changes: dict[str, Any], loc: list[Any]
) -> None:
    got, message = refused(api, **changes)
    assert got == loc and "cannot be checked" in message
    # The connection is still good for the next request.
    assert api.client.get("/v1/sweeps", headers=api.headers).status_code == 200


def _truncated(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])


def _header_garbage(model: Path) -> None:
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 12) + b"not json!!!!" + b"\0" * 16)


def _huge_header(model: Path) -> None:
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")


def _pickle_only(model: Path) -> None:
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")


def _no_weights(model: Path) -> None:
    (model / "model.safetensors").unlink()


def _no_config(model: Path) -> None:
    (model / "config.json").unlink()


def _bad_config(model: Path) -> None:
    (model / "config.json").write_text("{not json")


def _remote_code(model: Path) -> None:
    config = {"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "modeling.Custom"}}
    (model / "config.json").write_text(json.dumps(config))


def _a_file(model: Path) -> None:
    shutil.rmtree(model)
    model.write_text("weights?")


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_truncated, "truncated or corrupt"),
        (_header_garbage, "header is not JSON"),
        (_huge_header, "header is longer than the file"),
        (_pickle_only, "pickle"),
        (_no_weights, "no *.safetensors"),
        (_no_config, "no config.json"),
        (_bad_config, "not valid JSON"),
        (_remote_code, "SHARPMIX_TRUST_REMOTE_CODE"),
        (_a_file, "this is a file"),
    ],
)
def test_an_unusable_model_directory_is_refused_at_submit(
    api: Api, damage: Callable[[Path], None], says: str
) -> None:
    model = api.root / "broken"
    write_model_dir(model)
    damage(model)
    loc, message = refused(api, model={"path": "broken"})
    assert loc == ["body", "model", "path"] and says in message, message


def test_a_readable_model_directory_is_accepted(api: Api) -> None:
    write_model_dir(api.root / "fine")
    api.submit(model={"path": "fine"})


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("rows.jsonl", '\n{"body": "hello"}\n'),
        ("rows.json", '[{"body": "hello"}]'),
        ("rows.csv", "body,id\nhello,1\n"),
    ],
)
def test_a_text_field_missing_from_the_records_is_refused(
    api: Api, name: str, content: str
) -> None:
    (api.root / "data" / name).write_text(content)
    loc, message = refused(api, finetuning=[{"name": "code", "path": f"data/{name}"}])
    assert loc == ["body", "finetuning", 0, "text_field"]
    assert "'text'" in message and "body" in message


def test_the_text_field_the_user_names_is_accepted_and_so_are_chat_records(api: Api) -> None:
    (api.root / "data" / "rows.jsonl").write_text('{"body": "hello"}\n')
    (api.root / "data" / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "x"}]}\n'
    )
    api.submit(finetuning=[{"name": "code", "path": "data/rows.jsonl", "text_field": "body"}])
    api.submit(finetuning=[{"name": "code", "path": "data/chat.jsonl"}])


def test_a_data_directory_is_checked_file_by_file(api: Api) -> None:
    folder = api.root / "data" / "parts"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "fine"}\n')
    (folder / "b.jsonl").write_text('{"content": "not the field"}\n')
    loc, message = refused(api, retention=[{"name": "wiki", "path": "data/parts"}])
    assert loc == ["body", "retention", 0, "text_field"] and "b.jsonl" in message
