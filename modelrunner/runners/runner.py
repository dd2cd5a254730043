"""A runner as the supervisor keeps it, the rows ``ps`` shows, and where its files go.

Plain bookkeeping: no scheduling decisions (``policy``) and no process handling (``process``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrunner.errors import ConfigError, RunnerFailed
from modelrunner.fsmodes import DIR_MODE
from modelrunner.runners.model import Mode, ModelFiles
from modelrunner.runners.process import ChildProcess
from modelrunner.runners.state import Event, RunnerState, next_state

if TYPE_CHECKING:
    from modelrunner.runners.kv_store import Tracked
    from modelrunner.runners.kvfiles import CacheKey

Key = tuple[str, Mode]
SOCKET_PATH_MAX = 100  # AF_UNIX sun_path is 104 (macOS) / 108 (Linux) bytes, NUL included


@dataclass(slots=True)
class SupervisorStats:
    """Counters for /metrics."""

    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    crashes: int = 0
    rate_limited: int = 0
    queue_full: int = 0
    queue_timeouts: int = 0


@dataclass(frozen=True, slots=True)
class RunnerStatus:
    """One row of ``ps``; times are unix seconds."""

    model: str
    name: str
    mode: Mode
    pid: int | None
    state: str
    rss_bytes: int | None
    loaded_since: float | None
    last_used: float | None
    in_flight: int
    until: float | None  # when the idle TTL unloads it; None = loading, busy or never
    pinned: bool
    restored_tokens: int = 0  # prompt-cache tokens restored into it at load (runners/kvcache)
    backend: str = "llama.cpp"  # the engine serving it (runners/backend.py)


class Runner:
    """One llama-server instance as the supervisor sees it; what ``acquire`` hands out."""

    def __init__(
        self,
        key: Key,
        files: ModelFiles,
        socket_path: Path,
        log_path: Path,
        backend: str = "llama.cpp",
    ) -> None:
        self.key = key
        self.backend = backend  # the engine's name (runners/backend.py)
        self.model_id, self.mode = key
        self.model = files
        self.socket_path = socket_path
        self.log_path = log_path
        self.state = RunnerState.STOPPED
        self.child: ChildProcess | None = None
        self.need_bytes = 0
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.last_used_wall: float | None = None
        self.loaded_since: float | None = None
        self.ready_at: float | None = None
        self.keep_alive_s: float | None = None  # the latest request's keep_alive wins
        self.expires_at: float | None = None
        self.idle = IdleTimer()
        self.stale = False  # settings changed: stop once idle
        self.reload = False  # with stale: a pinned or preloaded model, load it again after
        self.stop_task: asyncio.Task[None] | None = None
        self.failure: RunnerFailed | None = None
        self.kv_key: CacheKey | None = None  # None: no prompt cache kept for this runner
        self.restored_tokens = 0
        self.kv_hit_pending = False  # restored; the first answer reusing it counts the hit
        self.kv_slots: Tracked | None = None  # its slots' conversations (runners/kv_store.py)

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def move(self, event: Event) -> None:
        self.state = next_state(self.state, event, f"{self.model.name} ({self.mode})")

    def __repr__(self) -> str:
        return f"<Runner {self.model.name} {self.mode} {self.state.value} pid={self.pid}>"


CLOCK_SLACK_S = 0.001  # a timer may fire this early (the loop's timers count in ms)


class IdleTimer:
    """A runner's idle deadline on one loop timer that moves lazily: a request's start does
    not cancel it, and its end moves the deadline without touching the timer unless the new
    one is earlier; a timer that fires before the deadline sets itself for it.  (A timer set
    and cancelled per request was a measurable share of the proxy's CPU per request.)"""

    __slots__ = ("_at", "_handle", "due")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the handle fires (the loop's clock)
        self.due: float | None = None  # the deadline; None: not idle (busy, or kept for good)

    @property
    def armed(self) -> bool:
        return self.due is not None

    def set(self, delay_s: float, callback: Callable[[Any], None], arg: Any) -> None:
        """``callback(arg)`` once *delay_s* pass without ``clear``/``cancel`` or a later
        ``set`` (the callback of the timer's first ``set`` is the one called)."""
        loop = asyncio.get_running_loop()
        self.due = due = loop.time() + delay_s
        if self._handle is not None:
            if self._at <= due:
                return  # it fires first and sets itself for the new deadline
            self._handle.cancel()
        self._handle = loop.call_at(due, self._fire, loop, callback, arg)
        self._at = due

    def clear(self) -> None:
        """Busy: no deadline (the timer, if set, finds none when it fires)."""
        self.due = None

    def cancel(self) -> None:
        self.due = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[Any], None], arg: Any
    ) -> None:
        self._handle = None
        due = self.due
        if due is None:
            return
        if loop.time() < due - CLOCK_SLACK_S:
            self._handle = loop.call_at(due, self._fire, loop, callback, arg)
            self._at = due
            return
        self.due = None
        callback(arg)


class Changed:
    """Wake everyone waiting for "something changed" (a release, a stop, a load's end)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._waiting = 0

    def notify(self) -> None:
        if not self._waiting:  # every release notifies: nothing to do when nobody waits
            return
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        self._waiting += 1
        try:
            await self._event.wait()
        finally:
            self._waiting -= 1


def slug(model_id: str) -> str:
    algo, _, hexpart = model_id.partition(":")
    if algo == "sha256" and re.fullmatch(r"[0-9a-f]{12,64}", hexpart):
        return f"sha256-{hexpart[:12]}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:40]
    return f"{safe}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def prepare_dirs(run_dir: Path, log_dir: Path) -> Path:
    """Create the run and log directories; return where runner sockets go (a short path)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "runners").mkdir(exist_ok=True)
    if len(str(run_dir / "r-0123456789-1000000.sock")) < SOCKET_PATH_MAX:
        return run_dir
    # A deep run_dir would overflow sun_path: use a private short directory instead.
    tag = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    short = Path(tempfile.gettempdir()) / f"mr-{os.getuid()}-{tag}"
    short.mkdir(mode=DIR_MODE, exist_ok=True)
    # In a shared /tmp the name may have been taken first: never put sockets in another's folder.
    st = short.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(
            f"{short}, where runner sockets go because {run_dir} is too long a path for them, "
            "is not a folder of this user's; remove it or choose a shorter runners.run_dir"
        )
    os.chmod(short, DIR_MODE)  # one an older version (or a loose umask) left open
    return short
