"""Fixtures for the reliability suite: the running daemon, reached over TCP, or a skip.

The daemon fixture (tests/fixtures/daemon.py) is owned by the server work; until it exists these
tests skip with a reason instead of erroring, so the suite's skeleton runs from day one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Target:
    """Where a running daemon answers, and the handle the fixture gave us."""

    base_url: str
    handle: Any


def _base_url(handle: Any) -> str | None:
    for attr in ("base_url", "url", "tcp_url"):
        value = getattr(handle, attr, None)
        if isinstance(value, str) and value.startswith("http"):
            return value.rstrip("/")
    port = getattr(handle, "port", None)
    if isinstance(port, int):
        return f"http://127.0.0.1:{port}"
    return None


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Target:
    """The real daemon on a temp home, or a skip while tests/fixtures/daemon.py is missing."""
    try:
        handle = request.getfixturevalue("daemon")
    except pytest.FixtureLookupError:
        pytest.skip("tests/fixtures/daemon.py (the `daemon` fixture) is not there yet")
    url = _base_url(handle)
    if url is None:
        pytest.skip(f"cannot tell the daemon fixture's TCP address from {handle!r}")
    return Target(base_url=url, handle=handle)


async def start_daemon(request: pytest.FixtureRequest, **settings: Any) -> Target:
    """Start a daemon with config overrides via `daemon_factory`; the one adapter to the fixture.

    `settings` are config sections as dicts (``runners={"max_loaded": 2}``). Skips while the
    fixture is missing.
    """
    try:
        factory = request.getfixturevalue("daemon_factory")
    except pytest.FixtureLookupError:
        pytest.skip("tests/fixtures/daemon.py (`daemon_factory`) is not there yet")
    handle = factory(**settings)
    if hasattr(handle, "__await__"):
        handle = await handle
    url = _base_url(handle)
    if url is None:
        pytest.skip(f"cannot tell the daemon fixture's TCP address from {handle!r}")
    return Target(base_url=url, handle=handle)


async def seed_models(target: Target, models: dict[str, Any]) -> None:
    """Put GGUFs into the daemon's store under the given references ({ref: gguf_path})."""
    add = getattr(target.handle, "add_model", None)
    if add is None:
        pytest.skip("the daemon fixture offers no add_model(ref, gguf) to seed its store")
    for ref, path in models.items():
        result = add(ref, path)
        if hasattr(result, "__await__"):
            await result


def pid_of(handle: Any) -> int:
    """The daemon's pid from the fixture's handle (`pid`, or `process.pid`), or a skip."""
    pid = getattr(handle, "pid", None)
    if isinstance(pid, int):
        return pid
    proc = getattr(handle, "process", None) or getattr(handle, "proc", None)
    if proc is not None and isinstance(getattr(proc, "pid", None), int):
        return int(proc.pid)
    pytest.skip(f"cannot tell the daemon's pid from {handle!r}")


def wait_exit(pid: int, timeout_s: float = 10.0) -> None:
    """Wait for (and, if ours, reap) a killed daemon; run it in a thread."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout_s)
