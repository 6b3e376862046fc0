"""The results a worker hands back: one status per ratio from its batches', enums as strings."""

from __future__ import annotations

import json

import pytest

from contract.results import Status
from contract.spec import Role

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("batches", "pruned", "status"),
    [
        (["ok", "ok"], False, Status.ok),
        (["ok", "no_increase"], False, Status.no_increase),
        (["no_increase", "increases_immediately", "ok"], False, Status.increases_immediately),
        (["increases_immediately"], True, Status.pruned),
        ([], False, Status.ok),
    ],
)
def test_the_most_telling_batch_status_wins(
    batches: list[str], pruned: bool, status: Status
) -> None:
    assert Status.of_batches(batches, pruned=pruned) is status


def test_statuses_and_roles_travel_as_their_values() -> None:
    assert json.dumps([Status.loss_only, Role.target]) == '["loss_only", "target"]'
    assert Status("pruned") is Status.pruned and Role.retention == "retention"
