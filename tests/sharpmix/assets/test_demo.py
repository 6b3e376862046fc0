from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sharpmix.assets.corpora import NAMES, general_documents, make_world, math_documents
from sharpmix.assets.demo import DEMO_VERSION, DemoAssets, build_demo_assets, measure_forgetting
from workers.data import DataSource, LoadPolicy, ModelSource, load_model, token_batches

pytestmark = pytest.mark.unit


def test_math_answers_are_correct() -> None:
    pattern = re.compile(r"answer : (\d+) ([-+*]) (\d+) = (\d+) \. the answer is (\d+) \.$")
    for document in math_documents(300, seed=3):
        match = pattern.search(document)
        assert match is not None, document
        a, op, b, result, answer = match.groups()
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert int(result) == int(answer) == expected >= 0


def test_general_documents_state_only_the_worlds_facts() -> None:
    world = {person.name: person for person in make_world(5)}
    documents = general_documents(200, seed=1, world_seed=5)
    assert len(set(documents)) > 190  # varied
    for document in documents:
        for name, town in re.findall(r"(\w+) lives in (\w+) \.", document):
            assert world[name].town == town
        for name, food in re.findall(r"every morning (\w+) eats (\w+) \.", document):
            assert world[name].food == food
    assert len(world) == len(NAMES)
    assert general_documents(5, seed=1, world_seed=5) == documents[:5]  # deterministic


def test_a_complete_build_is_reused(tmp_path: Path) -> None:
    assets = DemoAssets.under(tmp_path)
    assets.manifest_path.parent.mkdir(parents=True)
    assets.manifest_path.write_text(json.dumps({"version": DEMO_VERSION, "seed": 0}))
    assert build_demo_assets(tmp_path) == assets  # returns at once: nothing was built
    assert not assets.model_dir.exists()


@pytest.mark.slow
def test_build_demo_assets_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assets = build_demo_assets(home)
    manifest = assets.manifest()
    assert (assets.model_dir / "model.safetensors").is_file()
    assert manifest["eval_loss_after"]["general_eval"] < 1.5  # type: ignore[index]
    stamp = assets.manifest_path.stat().st_mtime_ns
    assert build_demo_assets(home) == assets
    assert assets.manifest_path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in home.iterdir()] == ["demo"]  # no staging directory left behind

    # The assets work through the same loaders a sweep uses.
    policy = LoadPolicy(allowed_roots=(home,), cache_dir=home / "cache")
    loaded = load_model(ModelSource(path="demo/model"), policy, seq_len=128)
    assert loaded.model.config.model_type == "olmo2"
    batches = token_batches(
        DataSource("math", path="demo/math.jsonl"),
        loaded.tokenizer,
        policy,
        seq_len=128,
        batch_size=8,
        num_batches=2,
        seed=0,
    )
    assert batches.shape == (2, 8, 128)
    assert int(batches.max()) < loaded.model.config.vocab_size
    with torch.no_grad():
        loss = loaded.model(input_ids=batches[0], labels=batches[0]).loss
    assert float(loss) < 2.0  # the 5% arithmetic share taught it something

    forgetting = measure_forgetting(assets, steps=20)
    assert forgetting.general_after > forgetting.general_before + 0.1
    assert forgetting.math_after < forgetting.math_before
