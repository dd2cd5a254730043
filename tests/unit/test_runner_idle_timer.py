"""A runner's idle timer: one loop timer that moves lazily, firing at the latest deadline."""

from __future__ import annotations

import asyncio

from modelrunner.runners.runner import IdleTimer


async def test_it_fires_at_the_deadline_of_the_last_set_even_when_that_is_later() -> None:
    loop = asyncio.get_running_loop()
    timer = IdleTimer()
    fired: list[float] = []
    timer.set(0.05, lambda arg: fired.append(loop.time()), None)
    started = loop.time()
    timer.set(0.2, lambda arg: fired.append(loop.time()), None)
    async with asyncio.timeout(10):
        while not fired:
            await asyncio.sleep(0.01)
    assert fired[0] >= started + 0.2 - 0.002
    assert not timer.armed
    await asyncio.sleep(0.1)
    assert len(fired) == 1


async def test_an_earlier_deadline_replaces_the_timer() -> None:
    loop = asyncio.get_running_loop()
    timer = IdleTimer()
    fired: list[str] = []
    timer.set(30, fired.append, "late")
    started = loop.time()
    timer.set(0.05, fired.append, "soon")
    async with asyncio.timeout(10):
        while not fired:
            await asyncio.sleep(0.01)
    assert fired == ["soon"]
    assert loop.time() - started < 30
    timer.cancel()


async def test_clear_and_cancel_keep_it_from_firing() -> None:
    timer = IdleTimer()
    fired: list[object] = []
    timer.set(0.02, fired.append, 1)
    timer.clear()  # busy: the timer fires and finds no deadline
    other = IdleTimer()
    other.set(0.02, fired.append, 2)
    other.cancel()
    await asyncio.sleep(0.1)
    assert fired == []
    assert not timer.armed
    assert not other.armed
