"""The header guard's table with recording fakes: who is dropped, in what order, and why."""

from __future__ import annotations

import asyncio

from modelrunner.server.header_guard import HeaderGuard, refusal


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.refused: list[str] = []
        self.dropped = asyncio.Event()
        self.at = 0.0

    def refuse(self, message: str) -> None:
        self.refused.append(message)
        self.at = asyncio.get_running_loop().time()
        self.dropped.set()


async def test_the_oldest_pending_connection_makes_room() -> None:
    """At the bound, arming a new connection drops the one pending longest, not the new one."""
    guard = HeaderGuard(timeout_s=0, max_pending=2)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn in (a, b, c):
        guard.arm(conn)
    assert a.refused
    assert "max_pending_header_connections" in a.refused[0]
    assert not b.refused
    assert not c.refused
    assert len(guard) == 2
    assert a not in guard
    assert guard.evicted == 1


async def test_finished_headers_free_their_slot_and_cancel_the_deadline() -> None:
    """A disarmed connection is neither evicted nor expired later."""
    guard = HeaderGuard(timeout_s=0.01, max_pending=1)
    a, b = Conn("a"), Conn("b")
    guard.arm(a)
    guard.disarm(a)
    guard.arm(b)
    async with asyncio.timeout(10):
        await b.dropped.wait()
    assert not a.refused
    assert b.refused
    assert "within 0.01s (server.header_timeout_s)" in b.refused[0]
    assert guard.expired == 1
    assert len(guard) == 0


async def test_arming_twice_keeps_the_first_deadline() -> None:
    """More bytes of the same unfinished head do not buy it more time or a second slot."""
    guard = HeaderGuard(timeout_s=0, max_pending=5)
    a = Conn("a")
    guard.arm(a)
    guard.arm(a)
    assert len(guard) == 1


def test_refusal_is_a_whole_http_answer_in_the_management_shape() -> None:
    raw = refusal("too slow")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert body == b'{"error": "too slow"}'


async def test_each_connection_gets_its_own_deadline_from_the_one_timer() -> None:
    """The timer set for the first connection, which finished, does not cut a later one short:
    each is dropped no earlier than timeout_s after it was armed, and only the slow ones."""
    loop = asyncio.get_running_loop()
    guard = HeaderGuard(timeout_s=0.2, max_pending=10)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    guard.arm(a)
    await asyncio.sleep(0.1)
    armed_b = loop.time()
    guard.arm(b)
    guard.arm(c)
    guard.disarm(a)
    guard.disarm(c)
    async with asyncio.timeout(10):
        await b.dropped.wait()
    assert b.at >= armed_b + 0.2
    assert not a.refused
    assert not c.refused
    assert guard.expired == 1
    assert len(guard) == 0
    guard.close()
