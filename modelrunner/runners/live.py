"""Which ``runners.*`` settings a reload (SIGHUP, ``POST /admin/reload``) can apply live.

Pure: compares two ``RunnersConfig`` and says what changes now and what waits for a restart; the
supervisor commits the answer (``Supervisor.apply_config``).  A key is live when the supervisor
reads it at each decision or each load (TTLs, limits, queue bounds, llama_args and the context
default for the next load of each model); it needs a restart when something already built on it
stays (the llama-server binary chosen once, the run directory holding sockets and pid records,
the log directory the daemon's own log is open in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from modelrunner.config import RunnersConfig
from modelrunner.runners.policy import Loaded

K = TypeVar("K", bound=Hashable)

RESTART_KEYS = frozenset({"llama_server_path", "engine", "mlx_python", "run_dir", "log_dir"})
# Live keys that reach only runners started after the reload (a running one keeps its argv/log).
NEXT_LOAD_KEYS = frozenset(
    {"llama_args", "default_context_size", "log_max_bytes", "log_backups", "log_tail_lines"}
)


@dataclass(frozen=True, slots=True)
class RunnersChange:
    """A reload's effect on ``runners.*``: keys as ``runners.<name>``."""

    config: RunnersConfig  # what to run with: the new live values, the old restart-only ones
    applied: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()

    @property
    def next_load(self) -> tuple[str, ...]:
        return tuple(k for k in self.applied if k.removeprefix("runners.") in NEXT_LOAD_KEYS)


def plan(old: RunnersConfig, new: RunnersConfig) -> RunnersChange:
    """Split the keys that differ into applied now and needing a restart (kept at old values)."""
    changed = [
        f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)
    ]
    restart = [k for k in changed if k in RESTART_KEYS]
    config = dataclasses.replace(new, **{k: getattr(old, k) for k in restart})
    return RunnersChange(
        config=config,
        applied=tuple(f"runners.{k}" for k in changed if k not in RESTART_KEYS),
        restart_required=tuple(f"runners.{k}" for k in restart),
    )


def over_limit(loaded: Sequence[Loaded[K]], max_loaded: int) -> tuple[K, ...]:
    """After ``max_loaded`` was lowered: the idle, unpinned runners to stop, LRU first."""
    extra = len(loaded) - max_loaded
    if extra <= 0:
        return ()
    idle = sorted((r for r in loaded if not r.busy and not r.pinned), key=lambda r: r.last_used)
    return tuple(r.key for r in idle[:extra])
