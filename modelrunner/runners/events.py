"""
What the supervisor tells observers about its runners' lives: one small value per transition.

The supervisor calls each observer synchronously, on the loop, at the moment it commits a
transition (loading, ready, stopping, stopped, crashed, failed).  Observers must not block or
raise; one that raises is logged and skipped, never allowed to break the supervisor.  This module
knows nothing of who listens (the server's event bus, a test's list): runners never import server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

Transition = Literal["loading", "ready", "stopping", "stopped", "crashed", "failed"]

# The supervisor's own stop reasons, in the words a dashboard shows.
REASONS = {
    "lru": "evicted",
    "memory": "evicted",
    "idle": "idle",
    "keep_alive": "idle",
    "unload": "unload",
    "shutdown": "shutdown",
    "reconfigured": "reconfigured",
}


@dataclass(frozen=True, slots=True)
class RunnerEvent:
    """One transition of one runner; ``reason`` for stops, ``detail`` the supervisor's word."""

    state: Transition
    model: str  # display name
    model_id: str
    mode: str
    pid: int | None
    reason: str | None = None
    detail: str | None = None
    exit_code: int | None = None
    backend: str = "llama.cpp"  # the engine: llama.cpp, mlx


RunnerObserver = Callable[[RunnerEvent], None]


def notify(observers: Iterable[RunnerObserver], event: RunnerEvent) -> None:
    """Call every observer; one that raises is logged, the rest still hear of it."""
    for observer in observers:
        try:
            observer(event)
        except Exception as e:  # an observer must never break the supervisor
            log.exception("runner.observer_failed", observer=repr(observer), error=repr(e))


def stop_reason(detail: str) -> str:
    """The public reason for a supervisor stop reason (unknown ones pass through)."""
    return REASONS.get(detail, detail)
