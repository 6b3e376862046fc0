"""Fixtures shared by every test tier.

Imports of the service side (sqlalchemy, the database layer) stay inside the fixtures that need
them, so the compute-core tiers also run on a bare GPU box: ``pytest tests/workers/curvature``.

Database tests run on the embedded SQLite backend always and on PostgreSQL when
``SHARPMIX_TEST_POSTGRES_URL`` names a server we may create databases on (``make test`` and CI set
it). Each test session creates its own PostgreSQL database and drops it at the end, so runs never
share state.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Without CUDA, Triton kernels (workers/curvature/attention.py) run on CPU tensors through
# Triton's interpreter, which Triton chooses when it is first imported: before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

POSTGRES_ENV = "SHARPMIX_TEST_POSTGRES_URL"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly where there is no CUDA; unmarked tests join the unit tier."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    tiers = {"unit", "db", "gpu", "slow"}
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if not tiers & set(item.keywords):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = os.environ[POSTGRES_ENV]
    name = f"sharpmix_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not os.environ.get(POSTGRES_ENV),
            reason=f"{POSTGRES_ENV} is not set (make test sets it when PostgreSQL runs)",
        ),
    ),
]


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database, once per backend; `db_url` migrates it for every db test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sharpmix.db'}"
    url: str = request.getfixturevalue("postgres_server_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """URL of a database migrated to head, once per backend."""
    from service.db.migrate import upgrade

    upgrade(empty_db_url)
    return empty_db_url


@dataclass(frozen=True)
class SweepAssets:
    """A tiny causal LM and two generated domains under one allowed root."""

    root: Path
    model_dir: str  # relative to root, as a sweep names it
    general: str
    math: str

    def spec(self, **overrides: object) -> dict[str, object]:
        """A small, valid sweep body over these assets."""
        body: dict[str, object] = {
            "model": {"path": self.model_dir},
            "pretraining": {"name": "general", "path": self.general},
            "finetuning": [{"name": "math", "path": self.math}],
            "ratios": [0.0, 0.5, 1.0],
            "learning_rate": 1e-3,
            "seq_len": 32,
            "batch_tokens": 512,
            "batches": 2,
        }
        body.update(overrides)
        return body


@pytest.fixture(scope="session")
def sweep_assets(tmp_path_factory: pytest.TempPathFactory) -> SweepAssets:
    """Generated corpora and an OLMo-2-style model trained 40 steps on them (a few seconds)."""
    from transformers import AutoModelForCausalLM, Olmo2Config

    from sharpmix.assets.corpora import general_documents, math_documents
    from sharpmix.assets.vocab import train_tokenizer

    root = tmp_path_factory.mktemp("assets")
    general = general_documents(400, seed=1, world_seed=0)
    math_docs = math_documents(400, seed=2)
    for name, docs in (("general.jsonl", general), ("math.jsonl", math_docs)):
        (root / name).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = train_tokenizer(general + math_docs, vocab_size=256)
    config = Olmo2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ids = tokenizer(" ".join(general[:200]) + " " + " ".join(math_docs[:20]))["input_ids"]
    rows = torch.tensor(ids[: (len(ids) // 33) * 33]).view(-1, 33)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        batch = rows[(step * 16) % max(1, len(rows) - 16) :][:16]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return SweepAssets(root=root, model_dir="model", general="general.jsonl", math="math.jsonl")
