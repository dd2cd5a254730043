"""
A runner's answer as awaitable reads: what aiohttp's lane and the translating relays consume.

The fast lane writes a runner's answer on from ``upstream.RunnerConnection``'s callbacks; the
relays that translate an answer (Anthropic's, the Responses API's, Ollama's) or re-frame it for
aiohttp's response need to ``await`` it instead.  ``RunnerAnswer`` is the ``upstream.Sink`` that
turns one into the other, so every lane and API family reaches llama-server through the same
connection code and the same pool (aiohttp's client is not on the way to a runner).  Reading is
paused while more than ``BUFFER_LIMIT`` bytes wait for a slow relay, and a runner that sends
nothing for the read timeout fails the read with ``UpstreamTimeout`` (silence, not length, as on
the fast lane).  Knows nothing of routes or of aiohttp's server.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

from multidict import CIMultiDict, CIMultiDictProxy

from modelrunner.errors import UpstreamTimeout
from modelrunner.server.relay.upstream import RunnerConnection

BUFFER_LIMIT = 256 * 1024  # bytes read ahead of the relay before the runner's reading pauses


class RunnerAnswer:
    """One answer of a runner, filled by its connection (``upstream.Sink``), read by a relay."""

    def __init__(self, conn: RunnerConnection, model: str, read_timeout_s: float) -> None:
        self._conn = conn
        self._model = model  # named by the UpstreamTimeout of a silent runner
        self._timeout_s = read_timeout_s or None
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.whole = False  # a body of known length, not one that comes piece by piece
        self.done = False  # the answer ended cleanly (the connection may be pooled again)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._began = False
        self._wake: asyncio.Future[None] | None = None

    # -- upstream.Sink (called on the loop by the connection)

    def head(self, status: int, headers: tuple[tuple[str, str], ...], chunked: bool) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self.whole = not chunked
        self._began = True
        self._notify()

    def body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BUFFER_LIMIT and not self._paused:
            self._paused = True
            self._conn.pause()
        self._notify()

    def frames(self, data: bytes) -> None:
        """Not used: aiohttp's response frames what it writes itself."""

    def token(self, data: bytes, payload: bytes) -> None:
        self.body(payload)

    def flush(self) -> None:
        """Not used: each ``body`` wakes the reader."""

    def end(self) -> None:
        self.done = True
        self._notify()

    def lost(self, exc: BaseException) -> None:
        self._error = exc
        self._notify()

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- the relay's side

    async def _wait(self) -> None:
        """Until the connection brings something, or the read timeout passes in silence."""
        self._wake = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._wake
        except TimeoutError as e:
            raise UpstreamTimeout(self._model, self._timeout_s or 0) from e
        finally:
            self._wake = None

    async def start(self) -> None:
        """Wait for the answer's head (status and headers)."""
        while not self._began:
            if self._error is not None:
                raise self._error
            await self._wait()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._conn.resume()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: all that is buffered at each step, in one piece."""
        while True:
            if self._chunks:
                yield self._take()
                continue
            if self.done:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.iter_any()])
