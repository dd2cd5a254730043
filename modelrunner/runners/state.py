"""The runner state table: which event may move a runner from which state, and nothing else.

Pure: no asyncio, no clock.  ``STOPPED -> STARTING -> READY -> STOPPING -> STOPPED``, plus
``BACKOFF`` (a load failed; the next one waits) and ``FAILED`` (crashed while serving).
"""

from __future__ import annotations

import enum


class RunnerState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "loading"  # ps shows "loading", as Docker does
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"


class Event(enum.StrEnum):
    SPAWN = "spawn"
    READY = "ready"
    FAIL = "fail"  # the load failed (exit, stall, bad argv)
    CRASH = "crash"  # the process died while ready
    STOP = "stop"  # we decided to stop it (evict, idle, unload, shutdown)
    EXITED = "exited"  # the process is reaped


class IllegalTransition(RuntimeError):
    """A bug in the supervisor: it asked for a move the table does not allow."""


S, E = RunnerState, Event
TRANSITIONS: dict[tuple[RunnerState, Event], RunnerState] = {
    (S.STOPPED, E.SPAWN): S.STARTING,
    (S.BACKOFF, E.SPAWN): S.STARTING,
    (S.FAILED, E.SPAWN): S.STARTING,
    (S.STARTING, E.READY): S.READY,
    (S.STARTING, E.FAIL): S.BACKOFF,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.READY, E.CRASH): S.FAILED,
    (S.READY, E.STOP): S.STOPPING,
    (S.FAILED, E.STOP): S.STOPPING,
    (S.BACKOFF, E.STOP): S.STOPPING,
    (S.STOPPING, E.EXITED): S.STOPPED,
    (S.FAILED, E.EXITED): S.STOPPED,
    (S.BACKOFF, E.EXITED): S.STOPPED,
}


def next_state(state: RunnerState, event: Event, model: str) -> RunnerState:
    """The state after *event*, or IllegalTransition naming the model."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"can't {event.value} runner {model} in state {state.value}"
        ) from None


def is_live(state: RunnerState) -> bool:
    """States that hold (or are about to hold) a process and a slot."""
    return state in (S.STARTING, S.READY)
