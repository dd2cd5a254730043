"""
Slow clients: a deadline on request headers and a bound on connections still sending theirs.

aiohttp has no header deadline: a connection that sends half a request line is held until its
keep-alive timer (75 s), and nothing bounds how many such connections there are (1,500 sockets
that sent ``GET / HTTP/1.1\\r\\nHost: x`` were all still open after 67 s).  Once TCP faces a
network that is a slowloris.  Here each connection is *pending* from the moment it opens (and,
on keep-alive, from the first byte of its next request) until aiohttp's parser has a whole
request head; a pending connection gets ``server.header_timeout_s`` to finish, and when
``server.max_pending_header_connections`` are pending, the oldest is dropped to make room.
Real clients send their headers in one write, so they are pending for microseconds and are
always the youngest; only the slow ones are ever dropped.  Both answer 408 in the management
shape (the route is not known yet) and close.

Owns the pending table and the protocol hooks that feed it; knows nothing of routes, keys or
models.  Reads a few of aiohttp's protocol attributes (``_request_count``, ``_messages``,
``_request_factory``, checked against 3.14), because the parser offers no "headers done" hook.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from modelrunner.server.protocol import AppRunner, JSONErrorRequestHandler, JSONErrorServer

log = structlog.get_logger(__name__)

REFUSE_LINGER_S = 2.0  # how long a refused connection is drained before it is closed


class Pending(Protocol):
    """A connection the guard can drop: it answers 408 with *message* and closes."""

    def refuse(self, message: str) -> None: ...


class HeaderGuard:
    """The connections that have not finished their request headers, oldest first.

    One timer for all of them, set for the oldest deadline, rather than one set and cancelled
    per connection: every connection is pending for a moment, and each timer was a tenth of a
    short stream's fixed cost.  All deadlines are ``timeout_s`` after arming, so the table's
    order (oldest first) is also the deadlines' order."""

    def __init__(self, *, timeout_s: float, max_pending: int) -> None:
        self.timeout_s = timeout_s
        self.max_pending = max(1, max_pending)
        self._pending: dict[Pending, float] = {}  # -> its deadline (the loop's clock)
        self._timer: asyncio.TimerHandle | None = None
        self.expired = 0  # dropped for taking longer than timeout_s
        self.evicted = 0  # dropped to make room for a newer connection

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, conn: object) -> bool:
        return conn in self._pending

    def arm(self, conn: Pending) -> None:
        """*conn* starts a request head: make room for it, then start its deadline."""
        if conn in self._pending:
            return
        while len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending))
            self.evicted += 1
            self._drop(
                oldest,
                "too many connections are still sending their request headers "
                "(server.max_pending_header_connections); this one was the slowest",
            )
        if self.timeout_s <= 0:
            self._pending[conn] = float("inf")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        self._pending[conn] = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire_due)

    def disarm(self, conn: Pending) -> None:
        """*conn*'s request head is complete (or the connection is gone).  The timer stays:
        when it fires it finds the next deadline, if any connection is still pending."""
        self._pending.pop(conn, None)

    def close(self) -> None:
        """Stop the timer (the listeners are closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire_due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn, deadline in list(self._pending.items()):
            if conn not in self._pending:
                continue  # dropped meanwhile (a refusal closes, and closing disarms)
            if deadline > now:
                if deadline != float("inf"):
                    self._timer = loop.call_at(deadline, self._expire_due)
                return
            self.expired += 1
            self._drop(
                conn,
                f"request headers not received within {self.timeout_s:g}s "
                "(server.header_timeout_s)",
            )

    def _drop(self, conn: Pending, message: str) -> None:
        self.disarm(conn)
        log.debug("http.header_guard_drop", reason=message, pending=len(self._pending))
        conn.refuse(message)


def refusal(message: str) -> bytes:
    """A whole HTTP/1.1 408 answer, written before any request of the connection is known."""
    body = json.dumps({"error": message}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def refuse_on(
    transport: asyncio.Transport | None, message: str, close: Callable[[], None]
) -> asyncio.TimerHandle | None:
    """Write the 408 and half-close; *close* runs after ``REFUSE_LINGER_S`` (the timer
    returned), or at once (None) when the transport is already gone or closing."""
    if transport is None or transport.is_closing():  # (uvloop's are no asyncio subclasses)
        close()
        return None
    transport.write(refusal(message))
    if transport.can_write_eof():
        transport.write_eof()
    return asyncio.get_running_loop().call_later(REFUSE_LINGER_S, close)


class GuardedRequestHandler(JSONErrorRequestHandler):
    """aiohttp's protocol (with JSON errors) that reports its header progress to a guard."""

    def __init__(self, manager: Server, guard: HeaderGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._linger: asyncio.TimerHandle | None = None  # set once refused
        # The body of the request last handed to the app: while it is still arriving (even
        # after the handler answered, e.g. a 401 to a big POST), bytes are body, not a new head.
        self._last_body: StreamReader | None = None
        factory = self._request_factory
        if factory is not None:

            def remember_body(message: Any, payload: StreamReader, *args: Any) -> Any:
                self._last_body = payload
                return factory(message, payload, *args)

            self._request_factory = remember_body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard.arm(self)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            return  # refused: drained and dropped, so that closing sends FIN, not RST
        # The first byte of a keep-alive connection's next request starts its deadline again;
        # bytes of a request in progress (its body) or of an upgraded connection do not.
        idle = (
            (self._last_body is None or self._last_body.is_eof())
            and not self._messages
            and self._payload_parser is None
            and not self._upgraded
        )
        # b"": aiohttp's resume_reading() calls in with no bytes once a body is drained.
        if data and idle and not (self._force_close or self._close):
            self._guard.arm(self)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._guard.disarm(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.disarm(self)
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def refuse(self, message: str) -> None:
        """Answer 408, half-close, and keep draining what the client sends for a moment.

        Closing a socket whose received bytes are unread makes the kernel send RST, which
        discards the 408 on its way; so the bytes are read (and dropped) until the client
        closes or ``REFUSE_LINGER_S`` passes."""
        if self._linger is None:
            self._linger = refuse_on(self.transport, message, self.force_close)
        else:
            self.force_close()


class GuardedServer(JSONErrorServer):
    """Builds `GuardedRequestHandler` protocols sharing the runner's guard."""

    header_guard: HeaderGuard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, self.header_guard, loop=self._loop, **self._kwargs)


class GuardedAppRunner(AppRunner):
    """The daemon's runner: JSON parser errors, plus the header deadline and bound."""

    def __init__(
        self, app: web.Application, *, header_timeout_s: float, max_pending: int, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_guard = HeaderGuard(timeout_s=header_timeout_s, max_pending=max_pending)

    async def cleanup(self) -> None:
        await super().cleanup()
        self.header_guard.close()

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer
        server.header_guard = self.header_guard  # type: ignore[attr-defined]
        return server
