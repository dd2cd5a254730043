"""Fixtures for the reliability suite: the running daemon, reached over TCP, or a skip.

The daemon comes from `tests/fixtures/daemon.py` (contract: /work/notes/daemon-fixture.md, owned
by the server work): a synchronous `daemon_factory(**sections) -> DaemonHandle` and a `daemon`
with default sections. Until that module exists these tests skip with a reason instead of
erroring. The handle's blocking calls (start, `add_model`, `restart`) run in a thread here, so an
async test's own servers (the fault proxy) keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Imported here, not inside the async helper: the first import of structlog/rich calls
# os.getcwd(), which blockbuster reports when it happens on the event loop.
from modelrunner.config import StoreConfig
from modelrunner.distribution.store import Store


@dataclass(frozen=True)
class Target:
    """Where a running daemon answers, and the fixture's `DaemonHandle`."""

    base_url: str
    handle: Any


@pytest.fixture(scope="module")
def target(llama_server_bin: Path) -> Iterator[Target]:
    """One real daemon (default sections) shared by a test module, or a skip while
    tests/fixtures/daemon.py is missing.

    Module-scoped, so the ~130 hostile/security requests-per-test don't each pay a daemon start
    (and one daemon taking every bad input in turn is the stronger check). Built from the
    fixture's `DaemonHandle` because `daemon` itself is function-scoped; being module-scoped it
    is up before the autouse `no_orphans` baseline of each test.
    """
    try:
        from tests.fixtures.daemon import DaemonHandle
    except ModuleNotFoundError:
        pytest.skip("tests/fixtures/daemon.py (the `daemon` fixture) is not there yet")
    handle = DaemonHandle({}, llama_server_bin)
    try:
        yield Target(base_url=handle.base_url.rstrip("/"), handle=handle)
    finally:
        handle.close()


def daemon_factory(request: pytest.FixtureRequest) -> Any:
    """The fixture's factory, or a skip while tests/fixtures/daemon.py is missing."""
    try:
        return request.getfixturevalue("daemon_factory")
    except pytest.FixtureLookupError:
        pytest.skip("tests/fixtures/daemon.py (`daemon_factory`) is not there yet")


async def start_daemon(request: pytest.FixtureRequest, **sections: Any) -> Target:
    """Start a daemon with config sections as dicts (``runners={"max_loaded": 2}``).

    The one adapter to `daemon_factory`; skips while the fixture is missing.
    """
    factory = daemon_factory(request)
    handle = await asyncio.to_thread(factory, **sections)
    return Target(base_url=handle.base_url.rstrip("/"), handle=handle)


async def seed_models(target: Target, models: dict[str, Path]) -> None:
    """Put GGUFs into the daemon's store under the given references ({ref: gguf_path})."""
    for ref, path in models.items():
        await asyncio.to_thread(target.handle.add_model, ref, path)


async def kill(target: Target) -> None:
    """SIGKILL the daemon mid-whatever and wait for it (its runners are left to the next start)."""
    await asyncio.to_thread(target.handle.kill)


async def restart(target: Target) -> None:
    """Start the daemon again on the same home, socket and port (the pid changes)."""
    await asyncio.to_thread(target.handle.restart)


async def kill_and_restart(target: Target) -> None:
    """SIGKILL, then start again on the same home, socket and port."""
    await kill(target)
    await restart(target)


def pid_of(handle: Any) -> int:
    """The daemon's current pid (it changes on restart)."""
    pid: int = handle.pid
    return pid


async def publish(registry_host: str, ref: str, gguf: Path, workdir: Path) -> None:
    """Package *gguf* in a throwaway store and push it as ``<registry_host>/<ref>``.

    Goes through the distribution Store API (the same artifact the daemon pulls).
    """
    store = Store(StoreConfig(path=workdir / "publish-store"))
    await store.open()
    try:
        await store.package(gguf, f"{registry_host}/{ref}")
        await store.push(f"{registry_host}/{ref}")
    finally:
        await store.close()
