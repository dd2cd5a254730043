"""
Docker's progress stream for pull, push and load: one JSON object per line, flushed per line.

``{"type":"progress","message":"Downloaded: 1.50 MB","total":N,"layer":{"id":"sha256:…","size":S,
"current":C},"mode":"pull"}`` … then a ``success`` or ``error`` line.  With ``Accept:
application/json`` the lines are raw NDJSON; otherwise ``text/plain`` with each line HTML-escaped
as Go's ``html.EscapeString`` does (Docker's CLI unescapes before parsing).  The HTTP status is
decided by the first event: an operation that fails before any progress answers a plain JSON
error with its own status (404, 401, 400…), not a 200 stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog
from aiohttp import web

from modelrunner.errors import ModelRunnerError
from modelrunner.server.state import STATE

log = structlog.get_logger(__name__)

T = TypeVar("T")
_GO_ESCAPES = str.maketrans({"&": "&amp;", "'": "&#39;", "<": "&lt;", ">": "&gt;", '"': "&#34;"})


def go_html_escape(text: str) -> str:
    return text.translate(_GO_ESCAPES)


def event_line(event: Any, mode: str) -> dict[str, Any]:
    """A store ProgressEvent as Docker's ``ProgressMessage``."""
    line: dict[str, Any] = event.to_json()
    line["mode"] = mode
    return line


def final_line(kind: str, message: str, mode: str) -> dict[str, Any]:
    return {
        "type": kind,
        "message": message,
        "total": 0,
        "layer": {"size": 0, "current": 0},
        "mode": mode,
    }


class ProgressStream:
    """Runs one operation, relaying its progress events to the client as they come."""

    def __init__(self, request: web.Request, mode: str, *, model: str | None = None) -> None:
        self.request = request
        self.mode = mode
        self.model = model  # for the live events (GET /engines/events)
        state = request.app.get(STATE)
        self.events = state.events if state is not None else None
        self.json = "application/json" in request.headers.get("Accept", "")
        self.response: web.StreamResponse | None = None
        self.sent_final = False

    async def _start(self) -> web.StreamResponse:
        if self.response is None:
            ctype = "application/json" if self.json else "text/plain"
            self.response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": f"{ctype}; charset=utf-8",
                    "X-Accel-Buffering": "no",
                    "Cache-Control": "no-cache",
                },
            )
            await self.response.prepare(self.request)
        return self.response

    async def write(self, line: dict[str, Any]) -> None:
        response = await self._start()
        text = json.dumps(line, ensure_ascii=False) + "\n"
        if not self.json:
            text = go_html_escape(text)
        if line.get("type") in ("success", "error"):
            self.sent_final = True
        if self.events is not None:
            self.events.progress(self.mode, self.model, line)
        await response.write(text.encode())

    async def run(
        self,
        operation: Callable[[Callable[[Any], None]], Coroutine[Any, Any, T]],
        success: Callable[[T], str],
    ) -> web.StreamResponse:
        """Run ``operation(progress)``; stream its events, then a success or error line."""
        loop = asyncio.get_running_loop()
        owner = threading.get_ident()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        def progress(event: Any) -> None:
            if threading.get_ident() == owner:
                queue.put_nowait(event)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, event)

        task: asyncio.Task[T] = asyncio.create_task(
            operation(progress), name=f"{self.mode} operation"
        )
        task.add_done_callback(lambda _: queue.put_nowait(done))
        try:
            while (event := await queue.get()) is not done:
                line = event_line(event, self.mode)
                if line["type"] == "error":
                    continue  # the exception below says it, once
                await self.write(line)
            if task.cancelled():
                raise asyncio.CancelledError
            error = task.exception()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if error is not None:
            if self.response is None:
                raise error  # nothing sent yet: a proper status and JSON error
            if isinstance(error, ModelRunnerError):
                message = error.message
            else:
                log.error("progress.failed", mode=self.mode, error=repr(error))
                message = f"internal error ({type(error).__name__}); see the daemon's log"
            # Docker appends a plain-text line after this one; every line here stays JSON, so an
            # NDJSON reader never chokes on the one line that matters.
            await self.write(final_line("error", f"Error: {message}", self.mode))
            await self.response.write_eof()
            return self.response
        if not self.sent_final:
            await self.write(final_line("success", success(task.result()), self.mode))
        response = await self._start()
        await response.write_eof()
        return response
