"""
Server-sent events to many clients (the request log, live events): a fan-out hub with a
bounded queue per client.

``Hub.publish`` never awaits and never blocks: each frame is encoded once and put on every
subscriber's queue with ``put_nowait``.  A subscriber whose queue is full is dropped on the spot
(its connection is closed, it is counted and logged), so a client that stops reading costs the
daemon one queue's worth of memory and nothing else: it never slows a publisher.  ``stream``
writes one subscription to one response.  Knows nothing of what the frames mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

HEARTBEAT_S = 15.0  # a comment line this often, so proxies and clients see the stream alive
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def frame(event: str, data: Any, *, event_id: int | None = None) -> bytes:
    """One SSE frame: ``event:``, optional ``id:``, one ``data:`` line of compact JSON."""
    head = f"event: {event}\n" if event_id is None else f"id: {event_id}\nevent: {event}\n"
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}data: {body}\n\n".encode()


def wants_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


class Subscription:
    """One client's queue; ``wants(topic)`` filters what it is sent."""

    def __init__(self, size: int, close: Callable[[], None], wants: Callable[[str], bool]) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=size)
        self.close = close
        self.wants = wants
        self.dropped = False


class Hub:
    """Fan-out of frames to subscribers; a full queue drops its subscriber."""

    def __init__(self, name: str, queue_size: int) -> None:
        self.name = name
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        self.dropped = 0  # clients dropped for not keeping up
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(
        self, close: Callable[[], None], wants: Callable[[str], bool] | None = None
    ) -> Subscription:
        sub = Subscription(self.queue_size, close, wants or (lambda _: True))
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, data: bytes, topic: str = "") -> None:
        """Queue *data* for every subscriber that wants *topic*; drop those that are full."""
        for sub in list(self._subs):
            if not sub.wants(topic):
                continue
            try:
                sub.queue.put_nowait(data)
            except asyncio.QueueFull:
                self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.dropped = True
        self.dropped += 1
        log.warning("sse.client_dropped", stream=self.name, queue_size=self.queue_size)
        sub.close()

    def close(self) -> None:
        """End every stream (daemon shutdown): a sentinel each, or a drop if one is full."""
        self.closed = True
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(None)
            except asyncio.QueueFull:
                self._drop(sub)


def closer(request: web.Request) -> Callable[[], None]:
    """Close *request*'s connection: a handler stuck writing to a stalled client gets an error."""

    def close() -> None:
        transport = request.transport
        if transport is not None:
            transport.close()

    return close


async def stream(
    request: web.Request, hub: Hub, sub: Subscription, first: Iterable[bytes] = ()
) -> web.StreamResponse:
    """Write *first*, then what *sub* receives, until the client leaves or the hub closes."""
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        for data in first:
            await response.write(data)
        while not hub.closed:
            try:
                async with asyncio.timeout(HEARTBEAT_S):
                    item = await sub.queue.get()
            except TimeoutError:
                item = b": keep-alive\n\n"
            if item is None:
                break
            await response.write(item)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client left, or was dropped for not reading: nothing to tell it
    finally:
        hub.unsubscribe(sub)
    return response
