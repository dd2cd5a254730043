"""
Server-sent events for the relays that read or write them: an incremental parser of the
runner's stream, the encoding of one event, and a write that tells a vanished client apart.

Pure apart from ``write``; knows nothing of any API family's events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from modelrunner.server.relay.proxy import ClientGone

MAX_LINE_BYTES = 1 << 20  # a line longer than this is dropped (a runner never writes one)


@dataclass(frozen=True, slots=True)
class Event:
    name: str | None
    data: str

    def json(self) -> Any:
        """The data as JSON, or None when it is not JSON (``[DONE]``)."""
        try:
            return json.loads(self.data)
        except ValueError:
            return None


class SSEParser:
    """Feed chunks as they come; get whole events back (chunks may cut lines anywhere)."""

    def __init__(self) -> None:
        self._pending = b""
        self._name: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_LINE_BYTES:
            self._pending = b""
        events: list[Event] = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode(errors="replace")
            if not line:
                if self._data:
                    events.append(Event(self._name, "\n".join(self._data)))
                self._name, self._data = None, []
            elif line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))
            elif line.startswith("event:"):
                self._name = line[6:].strip()
        return events

    def close(self) -> list[Event]:
        """Whatever event the stream ended in the middle of."""
        return self.feed(b"\n\n") if self._pending or self._data else []


def encode(name: str | None, data: Any) -> bytes:
    """One event; *data* as compact JSON."""
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def encode_raw(name: str | None, data: str) -> bytes:
    """One event whose data is passed on as it came (``[DONE]``, a line that is not JSON)."""
    head = f"event: {name}\n" if name else ""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"{head}{lines}\n".encode()


def error_message(data: bytes, status: int) -> str:
    """The message of a runner's error answer (OpenAI's JSON shape, else its text)."""
    text = data.decode(errors="replace")
    value = Event(None, text).json()
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return (
        text.strip()[:1000] if value is None and text.strip() else f"the runner answered {status}"
    )


SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def write(response: web.StreamResponse, data: bytes) -> None:
    """Write to the client; a reset connection is the client leaving (``ClientGone``)."""
    try:
        await response.write(data)
    except ConnectionResetError as e:
        raise ClientGone(response) from e
