from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerFast

from workers.data import SUPPORTED_SUFFIXES, DataError, DataSource, LoadPolicy, load_texts
from workers.data.sources import data_fingerprint

pytestmark = pytest.mark.unit

JsonlWriter = Callable[[Path, list[dict[str, object]]], Path]


def test_jsonl_text_records(tmp_path: Path, policy: LoadPolicy, write_jsonl: JsonlWriter) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"text": "one", "id": 1}, {"text": " "}, {"text": "two"}])
    texts = load_texts(DataSource("pt", path="d.jsonl"), policy)
    assert texts.column_names == ["text"]
    assert texts["text"] == ["one", "two"]  # the blank record is dropped


def test_every_supported_file_type_in_one_directory(
    tmp_path: Path, policy: LoadPolicy, write_jsonl: JsonlWriter
) -> None:
    data = tmp_path / "mix"
    write_jsonl(data / "a.jsonl", [{"text": "from jsonl"}])
    (data / "b.json").write_text('[{"text": "from json"}]')
    (data / "c.csv").write_text("text,other\nfrom csv,1\n")
    pq.write_table(pa.table({"text": ["from parquet"]}), data / "d.parquet")
    (data / "nested").mkdir()
    (data / "nested" / "e.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    (data / ".hidden.jsonl").write_text('{"text": "never read"}\n')
    (data / "README.md").write_text("# not data")
    texts = sorted(load_texts(DataSource("pt", path="mix"), policy)["text"])
    assert [t.strip() for t in texts] == sorted(
        [
            "from jsonl",
            "from json",
            "from csv",
            "from parquet",
            "first paragraph\nstill first",
            "second paragraph",
        ]
    )
    assert set(SUPPORTED_SUFFIXES) == {".jsonl", ".json", ".parquet", ".csv", ".txt"}


def test_custom_text_field_and_missing_field(
    tmp_path: Path, policy: LoadPolicy, write_jsonl: JsonlWriter
) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"body": "hello", "title": "t"}])
    assert load_texts(DataSource("ft", path="d.jsonl", text_field="body"), policy)["text"] == [
        "hello"
    ]
    with pytest.raises(DataError, match=r"no 'text' field \(fields present: body, title\)") as info:
        load_texts(DataSource("ft", path="d.jsonl"), policy)
    assert info.value.field == "ft.text_field"


def test_chat_and_prompt_completion_use_the_chat_template(
    tmp_path: Path,
    policy: LoadPolicy,
    write_jsonl: JsonlWriter,
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}])
    write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4"}])
    templated = "<|user|>\n2+2?\n<|assistant|>\n4\n"
    assert load_texts(DataSource("m", path="chat.jsonl"), policy, tokenizer=tokenizer)["text"] == [
        templated
    ]
    assert load_texts(DataSource("m", path="pc.jsonl"), policy, tokenizer=tokenizer)["text"] == [
        templated
    ]
    # Without a template (or tokenizer): the documented plain join.
    assert load_texts(DataSource("m", path="chat.jsonl"), policy)["text"] == [
        "user: 2+2?\nassistant: 4"
    ]
    assert load_texts(DataSource("m", path="pc.jsonl"), policy)["text"] == ["2+2?\n4"]


def test_empty_and_unsupported_inputs(
    tmp_path: Path, policy: LoadPolicy, write_jsonl: JsonlWriter
) -> None:
    write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": "   "}])
    with pytest.raises(DataError, match="no non-empty") as info:
        load_texts(DataSource("pt", path="blank.jsonl"), policy)
    assert info.value.field == "pt.path"
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(DataError, match=r"unsupported file type '\.xml'; supported: \.jsonl"):
        load_texts(DataSource("pt", path="data.xml"), policy)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("x")
    with pytest.raises(DataError, match="has no data files"):
        load_texts(DataSource("pt", path="docs"), policy)
    with pytest.raises(DataError, match="does not exist") as missing:
        load_texts(DataSource("pt", path="nope.jsonl"), policy)
    assert missing.value.field == "pt.path"
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match="cannot parse"):
        load_texts(DataSource("pt", path="broken.jsonl"), policy)


def test_field_prefix_overrides_the_domain_name(tmp_path: Path, policy: LoadPolicy) -> None:
    with pytest.raises(DataError) as info:
        load_texts(DataSource("pt", path="nope.jsonl"), policy, field="domains.0")
    assert info.value.field == "domains.0.path"


def test_hub_dataset_offline(policy: LoadPolicy) -> None:
    offline = LoadPolicy(policy.allowed_roots, policy.cache_dir, offline=True)
    with pytest.raises(DataError, match="offline") as info:
        load_texts(DataSource("pt", hub_id="allenai/dolmino-mix-1124", config="math"), offline)
    assert info.value.field == "pt.hub_id"
    # The real hub path, failing under HF_DATASETS_OFFLINE=1 (conftest): a DataError, no hang.
    with pytest.raises(DataError, match="cannot load dataset") as info:
        load_texts(DataSource("pt", hub_id="sharpmix-tests/no-such-dataset"), policy)
    assert info.value.field == "pt.hub_id"


def test_fingerprint_follows_content_not_location(tmp_path: Path, write_jsonl: JsonlWriter) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_jsonl(first / "d.jsonl", [{"text": "same"}])
    write_jsonl(second / "d.jsonl", [{"text": "same"}])
    policy_a = LoadPolicy((first,), tmp_path / "cache")
    policy_b = LoadPolicy((second,), tmp_path / "cache")
    src = DataSource("pt", path="d.jsonl")
    assert data_fingerprint(src, policy_a) == data_fingerprint(src, policy_b)
    write_jsonl(second / "d.jsonl", [{"text": "changed"}])
    assert data_fingerprint(src, policy_a) != data_fingerprint(src, policy_b)
    other_field = DataSource("pt", path="d.jsonl", text_field="body")
    assert data_fingerprint(src, policy_a) != data_fingerprint(other_field, policy_a)
