"""The runner state table: legal moves and the error for illegal ones."""

from __future__ import annotations

import pytest

from modelrunner.runners.state import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    RunnerState,
    is_live,
    next_state,
)

S, E = RunnerState, Event


@pytest.mark.parametrize(
    ("path", "end"),
    [
        ([E.SPAWN, E.READY, E.STOP, E.EXITED], S.STOPPED),
        ([E.SPAWN, E.FAIL, E.EXITED], S.STOPPED),
        ([E.SPAWN, E.READY, E.CRASH, E.EXITED], S.STOPPED),
        ([E.SPAWN, E.STOP, E.EXITED], S.STOPPED),
        ([E.SPAWN, E.FAIL, E.SPAWN, E.READY], S.READY),
    ],
)
def test_lifecycles_walk_the_table(path: list[Event], end: RunnerState) -> None:
    """Every lifecycle the supervisor uses is allowed by the table."""
    state = S.STOPPED
    for event in path:
        state = next_state(state, event, "m")
    assert state is end


def test_an_illegal_event_names_event_model_and_state() -> None:
    with pytest.raises(IllegalTransition, match="can't ready runner ai/x in state stopped"):
        next_state(S.STOPPED, E.READY, "ai/x")


def test_a_runner_stopping_cannot_be_marked_ready() -> None:
    with pytest.raises(IllegalTransition):
        next_state(S.STOPPING, E.READY, "m")


def test_every_target_state_is_a_state() -> None:
    assert set(TRANSITIONS.values()) <= set(RunnerState)


def test_only_loading_and_ready_runners_hold_a_slot() -> None:
    assert [s for s in RunnerState if is_live(s)] == [S.STARTING, S.READY]


def test_loading_shows_as_loading_in_ps() -> None:
    assert S.STARTING.value == "loading"
