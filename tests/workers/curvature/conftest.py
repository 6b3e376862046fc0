"""Fixtures for the curvature tests; helpers live in curvature_helpers.py next to this file."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from tests.workers.curvature.curvature_helpers import Quadratic, spd


@pytest.fixture
def quadratic_factory() -> Callable[..., Quadratic]:
    def make(n: int, condition: float, seed: int) -> Quadratic:
        gen = torch.Generator().manual_seed(seed + 1000)
        b = torch.randn(n, generator=gen, dtype=torch.float64)
        theta = torch.randn(n, generator=gen, dtype=torch.float64)
        return Quadratic(spd(n, condition, seed), b, theta)

    return make


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models run fastest on one thread; with the machine's cores shared, more threads
    # oversubscribe them (measured here: 40x slower steps on 2 threads under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
