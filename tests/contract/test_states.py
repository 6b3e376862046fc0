"""The state machine of sweeps and tasks: which moves the transition table allows."""

from __future__ import annotations

import pytest

from contract.states import (
    SWEEP_FROM,
    TASK_FROM,
    SweepState,
    TaskState,
    sweep_may_move,
    task_may_move,
)

pytestmark = pytest.mark.unit

FINAL_TASK_STATES = (TaskState.done, TaskState.failed, TaskState.cancelled)


@pytest.mark.parametrize("final", [SweepState.failed, SweepState.cancelled])
def test_a_failed_or_cancelled_sweep_never_moves_again(final: SweepState) -> None:
    assert not any(sweep_may_move(final, target) for target in SweepState)


def test_a_succeeded_sweep_only_goes_back_to_running() -> None:
    # Candidates added to a finished sweep (issue 11, part 5): it runs them, then succeeds again.
    assert [t for t in SweepState if sweep_may_move(SweepState.succeeded, t)] == [
        SweepState.running
    ]


@pytest.mark.parametrize("final", FINAL_TASK_STATES)
def test_a_finished_task_never_moves_again(final: TaskState) -> None:
    assert not any(task_may_move(final, target) for target in TaskState)


def test_the_lifecycles_allow_exactly_these_moves() -> None:
    sweep_moves = {(s, t) for s in SweepState for t in SweepState if sweep_may_move(s, t)}
    assert sweep_moves == {
        (SweepState.queued, SweepState.running),
        (SweepState.succeeded, SweepState.running),  # candidates added
        (SweepState.running, SweepState.succeeded),
        (SweepState.queued, SweepState.failed),
        (SweepState.running, SweepState.failed),
        (SweepState.queued, SweepState.cancelled),
        (SweepState.running, SweepState.cancelled),
    }
    task_moves = {(s, t) for s in TaskState for t in TaskState if task_may_move(s, t)}
    assert task_moves == {
        (TaskState.queued, TaskState.running),
        (TaskState.running, TaskState.running),  # takeover after the lease ran out
        (TaskState.running, TaskState.queued),  # handed back, or a retry
        (TaskState.running, TaskState.done),
        (TaskState.running, TaskState.failed),
        (TaskState.queued, TaskState.cancelled),
        (TaskState.running, TaskState.cancelled),
    }


def test_every_state_but_the_first_is_reachable() -> None:
    assert set(SWEEP_FROM) == set(SweepState) - {SweepState.queued}
    assert set(TASK_FROM) == set(TaskState)
