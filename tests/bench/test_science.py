"""Unit checks of the evidence scripts' helpers (bench/science); the GPU run is no test."""

from __future__ import annotations

import itertools

import pytest
import torch

from bench.science.analyze import spearman
from bench.science.common import WordEncoder, _module, wsd_lr

pytestmark = pytest.mark.unit


def test_spearman_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties get their mean rank: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 2], [1, 2]) is None  # too few points
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # no variation


def test_wsd_schedule_shape() -> None:
    lrs = [wsd_lr(s, total=100, peak=1.0, warmup=10, decay_frac=0.3) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lr == 1.0 for lr in lrs[10:70])
    assert all(a > b for a, b in itertools.pairwise(lrs[70:]))
    assert 0 < lrs[-1] < 0.05


def test_word_encoder_matches_tokenizer() -> None:
    torch.set_num_threads(1)
    corpora, vocab = _module("corpora"), _module("vocab")
    docs = corpora.general_documents(200, seed=0, world_seed=0)
    docs += corpora.math_documents(100, seed=0)
    tokenizer = vocab.train_tokenizer(docs, vocab_size=600, chat_template=False)
    encoder = WordEncoder(tokenizer)
    encoder.check(docs)  # raises on any difference
    stream = encoder.stream(docs[:3])
    assert int((stream == tokenizer.eos_token_id).sum()) == 3
