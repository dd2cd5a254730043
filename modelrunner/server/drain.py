"""
SIGTERM's drain as clients see it: who is still in flight, who arrives late, who gets cut.

The daemon calls ``start()`` when it begins to stop; the listeners stay open during the drain so a
request that arrives then gets a JSON 503 with ``Retry-After`` in its route's own error shape
(a refused connection tells a client nothing).  Requests in flight get ``server.drain_timeout_s``
to finish; at the bound ``cut()`` cancels their handlers, and each one that was cut answers for
itself: a stream already started ends with an error event saying the daemon is stopping
(``openai_api.serve``), one that had not started answers the same 503.  aiohttp's own shutdown
would cancel the handler and close the transport in the same step, so nothing could be written:
that is why the drain is ours and runs before ``AppRunner.cleanup()``.  Knows nothing of
models or runners.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from modelrunner.errors import Unavailable
from modelrunner.server.middleware import Handler, error_response


class Stopping(Unavailable):
    """The daemon is stopping: retry once it is back (its service manager restarts it)."""

    code = "shutting_down"


STARTED = web.RequestKey("drain_started", bool)


async def mark_started(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: from here on a cut request cannot answer with a status."""
    request[STARTED] = True


LATE = Stopping("the daemon is stopping (SIGTERM) and takes no new requests; retry once it is back")


class Drain:
    """The in-flight handlers and whether the daemon drains; one per app."""

    def __init__(self) -> None:
        self.draining = False
        self.retry_after_s = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self, retry_after_s: int) -> None:
        """From now on every new request is refused with a 503 and this Retry-After."""
        self.draining = True
        self.retry_after_s = max(1, retry_after_s)

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight; False when *timeout_s* passed first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self._idle.is_set()

    def cut(self) -> int:
        """Cancel every handler still in flight; each answers for itself (see ``was_cut``)."""
        for task in self._tasks:
            if not task.done():
                self._cut.add(task)
                task.cancel()
        return len(self._cut)

    def was_cut(self) -> bool:
        """True in a handler the drain cancelled: it should answer, then return normally."""
        task = asyncio.current_task()
        if task is None or task not in self._cut:
            return False
        task.uncancel()
        return True

    @staticmethod
    def cut_error() -> Stopping:
        """What a request cut at the drain bound is told (a stream: in its last event)."""
        return Stopping(
            "the daemon is stopping (SIGTERM): this request did not finish within "
            "server.drain_timeout_s and was cut; retry once it is back"
        )

    def _refuse(self, request: web.Request, error: Stopping) -> web.Response:
        headers = {"Retry-After": str(self.retry_after_s)}
        response = error_response(request, error.status, error.message, error.code, headers)
        response.force_close()  # a keep-alive client must reconnect to the next daemon
        return response

    def enter(self, task: asyncio.Task[Any]) -> None:
        """*task* serves a request: the drain waits for it (and cuts it at the bound)."""
        self._tasks.add(task)
        self._idle.clear()

    def leave(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.draining:
            return self._refuse(request, LATE)
        task = asyncio.current_task()
        if task is None:
            return await handler(request)
        self.enter(task)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            # An answer already begun (a pull's progress) cannot become a 503: it is just closed.
            if request.get(STARTED) or not self.was_cut():
                raise
            return self._refuse(request, self.cut_error())
        finally:
            self.leave(task)
