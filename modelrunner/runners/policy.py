"""Residency decisions: which runners to evict for a new one, idle TTLs, crash backoff.

Pure functions over plain data: no asyncio, no clock, no logging.  The supervisor reads its state,
calls these, commits the answer to its maps, and only then awaits the side effects.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Blocked = Literal["busy", "pinned", "too_big"]
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Loaded(Generic[K]):
    """A runner as the planner sees it (loads in progress included, marked busy)."""

    key: K
    need_bytes: int
    last_used: float  # monotonic seconds; smaller = less recently used
    busy: bool  # requests in flight, or still loading
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Plan(Generic[K]):
    """Evict these (least recently used first); *blocked* says why the new one still can't fit."""

    evict: tuple[K, ...]
    blocked: Blocked | None = None

    @property
    def fits(self) -> bool:
        return self.blocked is None


def plan_load(
    need_bytes: int,
    loaded: Sequence[Loaded[K]],
    *,
    max_loaded: int,
    budget_bytes: int | None,
) -> Plan[K]:
    """Evict least recently used idle, unpinned runners until the new one fits (true LRU)."""
    if budget_bytes is not None and need_bytes > budget_bytes:
        return Plan((), "too_big")

    def fits(count: int, used: int) -> bool:
        return count + 1 <= max_loaded and (
            budget_bytes is None or used + need_bytes <= budget_bytes
        )

    count = len(loaded)
    used = sum(r.need_bytes for r in loaded)
    evict: list[K] = []
    for runner in sorted(loaded, key=lambda r: r.last_used):
        if fits(count, used):
            break
        if runner.busy or runner.pinned:
            continue
        evict.append(runner.key)
        count -= 1
        used -= runner.need_bytes
    if fits(count, used):
        return Plan(tuple(evict))
    # Only busy runners can still make room, once they drain; pinned ones never will.
    if any(r.busy and not r.pinned for r in loaded):
        return Plan(tuple(evict), "busy")
    return Plan(tuple(evict), "pinned")


def plan_oom_retry(loaded: Sequence[Loaded[K]]) -> tuple[K, ...]:
    """After an out-of-memory load failure: every idle, unpinned runner, LRU first."""
    idle = [r for r in loaded if not r.busy and not r.pinned]
    return tuple(r.key for r in sorted(idle, key=lambda r: r.last_used))


def effective_ttl(
    *,
    request_keep_alive_s: float | None,
    model_idle_ttl_s: float | None,
    default_idle_ttl_s: float,
    pinned: bool,
) -> float | None:
    """Seconds a runner stays loaded after its last request ends; None = forever.

    Ollama's keep_alive meaning: 0 = unload right after this request, negative = never.  The latest
    request's keep_alive wins over the model's setting, which wins over the default.  Pinned
    models never idle out.
    """
    if pinned:
        return None
    for ttl in (request_keep_alive_s, model_idle_ttl_s):
        if ttl is not None:
            return None if ttl < 0 else ttl
    return None if default_idle_ttl_s < 0 else default_idle_ttl_s


def backoff_delay_s(failures: int, *, base_s: float, max_s: float) -> float:
    """Wait before the next load after *failures* consecutive failures: none for the first retry."""
    if failures <= 1:
        return 0.0
    return float(min(max_s, base_s * 2 ** (failures - 2)))


def retry_after_s(in_flight: int, max_in_flight: int) -> int:
    """A Retry-After hint for a model at its in-flight limit (whole seconds, at least 1)."""
    return max(1, in_flight // max(1, max_in_flight))
