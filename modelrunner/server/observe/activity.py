"""
What ``inference.pass_through()`` — the one path every inference request takes to a runner —
tells the request log and the live-event counters about each request.

``begin`` makes a ``Recorded`` for one request (opened off the path to the runner, see its
docstring); ``pass_through`` hands its tap to the relay (``feeds``: one list append per chunk),
calls ``answered`` once the answer is relayed, ``failed`` with an error, and ``finish`` from its
``finally`` (which also runs when the client's disconnect cancels the handler).  Every method
is synchronous and cheap: nothing here awaits or parses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from modelrunner.errors import ModelRunnerError
from modelrunner.server.middleware import error_body

if TYPE_CHECKING:
    from modelrunner.server.observe.request_log import Record
    from modelrunner.server.state import ServerState

CLIENT_GONE = 499  # nginx's "client closed request": no status was sent, or the answer was cut
_STREAM_ENDS = (b"[DONE]", b"message_stop")


class RequestInfo(Protocol):
    """What the accounting reads of a request (an aiohttp request has it all)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class Forwarded(Protocol):
    """What the accounting reads of a relay's progress, and the tap it hands it
    (``proxy.Forwarded``: the relays know the accounting, not the other way round)."""

    tap: Callable[[bytes], None] | None
    answer: tuple[int, bytes] | None

    @property
    def status(self) -> int | None: ...

    @property
    def sse(self) -> bool: ...


class Recorded:
    """One request on its way through ``serve``; a ``record`` of None when the log is off.

    Opened (the request log's record and the live counter) just after the request is on its way
    to the runner: ``begin`` schedules it, so that it is not on the path to the runner's answer;
    anything that reads or ends the record opens it first."""

    def __init__(
        self,
        state: ServerState,
        request: RequestInfo,
        model_id: str,
        name: str,
        body: bytes,
        logged: bool,
    ) -> None:
        self._state = state
        self._request = request
        self._model_id = model_id
        self._name = name
        self._body = body
        self._logged = logged
        self._started = time.monotonic()
        self._opened = False
        self.record: Record | None = None
        self.tap = self._tap if logged else None
        self._forwarded: Forwarded | None = None
        self._status: int | None = None
        self._error = ""

    def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        state = self._state
        if self._logged:
            request = self._request
            log = state.requests
            settings = state.settings.get(self._model_id)
            log.config[self._model_id] = settings.to_wire() if settings is not None else {}
            self.record = log.begin(
                model_id=self._model_id,
                model=self._name,
                method=request.method,
                url=request.path,
                user_agent=request.headers.get("User-Agent", ""),
                body=self._body,
                started=self._started,
            )
            if self._forwarded is not None:
                self._forwarded.tap = self.record.tap
        state.events.request_started(self._name)

    def feeds(self, forwarded: Forwarded) -> None:
        """Give the relay the tap (``forwarded.tap``): this object's until the record is open,
        then the record's own, so that each streamed chunk costs one call, not two."""
        self._forwarded = forwarded
        forwarded.tap = self.tap
        if self.record is not None:
            forwarded.tap = self.record.tap

    def _tap(self, chunk: bytes) -> None:
        if not self._opened:
            self.open()
        if self.record is not None:
            self.record.tap(chunk)

    def answered(self, forwarded: Forwarded) -> None:
        """The runner's answer was relayed; a whole (not streamed) one: its status and body."""
        self.open()
        if forwarded.answer is not None:
            self._status, body = forwarded.answer
            if self.record is not None:
                self.record.tap(body)

    def served_by(self, backend: str) -> None:
        """The backend whose runner took the request (the request log shows it)."""
        self.open()
        if self.record is not None:
            self.record.backend = backend

    def status(self, status: int) -> None:
        """An answer this daemon gave without the runner (a preload's 200)."""
        self._status = status

    def failed(self, path: str, error: ModelRunnerError) -> None:
        """An error this daemon answers (before the answer began) or appends to a stream."""
        self.open()
        self._error = _json(error_body(path, error.status, error.message, error.code))
        if self._status is None:
            self._status = error.status

    def finish(self, forwarded: Forwarded) -> None:
        self.open()
        status = self._status
        if forwarded.status is not None:
            status = forwarded.status
            record = self.record
            last = record.last if record is not None else b""
            if not self._error and forwarded.sse and not any(end in last for end in _STREAM_ENDS):
                self._error = _json({"error": "the client disconnected before the answer ended"})
        if status is None:
            status = CLIENT_GONE
            self._error = self._error or _json({"error": "the client disconnected"})
        failed = status >= 400 or bool(self._error)
        self._state.events.request_finished(self._name, failed=failed)
        if self.record is not None:
            self._state.requests.finish(self.record, status, self._error)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def begin(
    state: ServerState,
    request: RequestInfo,
    model_id: str,
    name: str,
    body: bytes,
    *,
    preload: bool = False,
) -> Recorded:
    """Start accounting for one inference request: counted always; recorded unless it only
    preloads (as Docker) or ``server.request_log`` is off.  Opened once this turn of the loop
    is over (the request sent, or waiting for its runner), or when first needed."""
    logged = state.config.server.request_log and not preload
    recorded = Recorded(state, request, model_id, name, body, logged)
    asyncio.get_running_loop().call_soon(recorded.open)
    return recorded
