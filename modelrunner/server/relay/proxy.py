"""
Pass-through of one OpenAI request to a runner's llama-server, over its Unix socket.

The body goes upstream unchanged; the answer comes back chunk by chunk as it arrives (SSE gets
``X-Accel-Buffering: no``), never buffered, so the first token reaches the client as soon as
llama-server writes it.  A client that disconnects cancels this handler (the daemon runs with
``handler_cancellation=True``), which closes the upstream connection and stops generation.
A runner that dies after the answer has started cannot change the status any more: the caller
ends the stream with an error event (``write_stream_error``).  Knows nothing of models or routes.
"""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from multidict import CIMultiDict

from modelrunner.errors import ModelRunnerError, UpstreamTimeout
from modelrunner.server.relay import fasthttp
from modelrunner.server.relay.answer import RunnerAnswer
from modelrunner.server.relay.upstream import RunnerPool, UpstreamClosed

log = structlog.get_logger(__name__)

# Request headers the runner gets: llama-server reads no other, and its own limits (100 headers
# of 8 KiB) must never be what answers a client (fasthttp forwards the same two).
RUNNER_HEADERS = frozenset(name.decode() for name in fasthttp.RUNNER_HEADERS)
# Headers that describe this hop, not the answer; never relayed.
_HOP = frozenset(
    h.lower()
    for h in (
        "Host",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Expect",
        "Accept-Encoding",
        "Origin",
    )
)
_RESPONSE_SKIP = _HOP | {"content-encoding", "access-control-allow-origin", "server", "date"}

_MAX_PENDING = 1 << 20  # an SSE line longer than this is not a usage line
RECENT_CHUNKS = 4  # a stream's last chunks searched for its usage (UsageScan.recent)

UsageFn = Callable[[dict[str, Any]], None]


class ClientGone(Exception):
    """The client disconnected while its answer was being relayed."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the client disconnected")
        self.response = response


@dataclass
class Forwarded:
    """What a forward got to before it ended: the client response once headers were sent."""

    response: web.StreamResponse | None = None
    streaming: bool = False
    usage: dict[str, Any] | None = field(default=None)
    # How an error ends an answer already under way; None = an SSE error event (OpenAI's).
    error_line: Callable[[ModelRunnerError], bytes] | None = None
    tap: Callable[[bytes], None] | None = None  # sees each streamed chunk (the request log)
    answer: tuple[int, bytes] | None = None  # a whole (not streamed) answer: status and body
    # A lane without an aiohttp response (the fast lane) says here that its answer began.
    started_status: int | None = None
    started_type: str = ""
    # The body that goes upstream when it is not the client's (the prompt cache's id_slot).
    upstream_body: bytes | None = None
    # The client's body as the lane parsed it, if it did (the prompt cache need not parse it).
    payload: Mapping[str, Any] | None = None

    @property
    def status(self) -> int | None:
        """The status of an answer that began streaming; None before (or for a whole one)."""
        if self.response is not None:
            return self.response.status
        return self.started_status

    @property
    def sse(self) -> bool:
        if self.response is not None:
            return "event-stream" in self.response.headers.get("Content-Type", "")
        return "event-stream" in self.started_type


# A replacement for the pass-through relay (another API family's framing, e.g. Ollama's NDJSON):
# given the client request, the runner's response and the Forwarded record, answer the client.
Relay = Callable[[web.Request, RunnerAnswer, Forwarded], Awaitable[web.StreamResponse]]


async def runner_chunks(up: RunnerAnswer, state: Forwarded) -> AsyncIterator[bytes]:
    """The runner's answer as it arrives, each chunk shown to the request log's tap first: what
    the other API families' relays read, so their streams are logged as the pass-through's are."""
    tap = state.tap
    async for chunk in up.iter_any():
        if tap is not None:
            tap(chunk)
        yield chunk


class UpstreamPool:
    """aiohttp's lane to the runners: its requests go through the connection pool the fast lane
    uses too (``upstream.RunnerPool``, ``runners``), each answer read as a ``RunnerAnswer``."""

    def __init__(
        self, *, connect_timeout_s: float, read_timeout_s: float, pump_threads: int = 0
    ) -> None:
        self.runners = RunnerPool(connect_timeout_s=connect_timeout_s, pump_threads=pump_threads)
        self.read_timeout_s = read_timeout_s  # silence, not length: between any two reads

    async def close(self) -> None:
        await self.runners.close()

    async def forward(
        self,
        request: web.Request,
        socket_path: Path,
        upstream_path: str,
        body: bytes,
        state: Forwarded,
        *,
        stream: bool = False,
        relay: Relay | None = None,
        model: str,
    ) -> web.StreamResponse:
        """Send *body* to the runner and stream its answer back; *state* records progress.

        *stream*: the client asked for SSE.  llama-server closes the connection after a streamed
        answer while announcing keep-alive, so such a request asks to close.  *relay*: translate
        the answer instead of passing it through.  *model*: the runner's model, named by the
        UpstreamTimeout a silent runner raises.  A pooled connection the runner had closed
        before answering is retried on the next one (``RunnerPool.connections``).
        """
        forward = b"".join(
            b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in request.headers.items()
            if k.lower() in RUNNER_HEADERS
        )
        raw = fasthttp.runner_request(upstream_path, forward, body, stream=stream)
        runners = self.runners
        for pooled in runners.connections(socket_path):
            conn = pooled or await runners.connect(socket_path)
            answer = RunnerAnswer(conn, model, self.read_timeout_s)
            conn.send(raw, answer)
            try:
                await answer.start()
            except UpstreamClosed:
                conn.close()
                if pooled is not None and conn.received == 0:
                    log.debug("proxy.stale_connection")
                    continue  # a keep-alive connection the runner had closed: the next one
                raise
            except BaseException:
                conn.close()  # cancelled (the client left) or silent: generation stops
                raise
            try:
                response = await (relay or self._relay)(request, answer, state)
            finally:
                if not answer.done:
                    conn.close()  # the relay stopped before the answer's end
            runners.release(socket_path, conn)
            return response
        raise UpstreamClosed("no connection to the runner")  # not reached: the last is fresh

    async def _relay(
        self, request: web.Request, up: RunnerAnswer, state: Forwarded
    ) -> web.StreamResponse:
        out_headers = relay_headers(up)
        ctype = up.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype and up.whole:
            # A plain JSON answer of known length: one read, one write (and usage for metrics).
            data = await up.read()
            usage_of_whole(state, up.status, data)
            return web.Response(status=up.status, body=data, headers=out_headers)
        if "text/event-stream" in ctype:
            out_headers["X-Accel-Buffering"] = "no"
            out_headers["Cache-Control"] = "no-cache"
        response = web.StreamResponse(status=up.status, headers=out_headers)
        await response.prepare(request)
        state.response = response
        state.streaming = True
        scan = UsageScan(state)
        tap = state.tap
        async for chunk in up.iter_any():
            if tap is not None:
                tap(chunk)
            scan.feed(chunk)
            try:
                await response.write(chunk)
            except ConnectionResetError as e:
                # The client left before the handler was cancelled: stop the upstream request
                # now (not an upstream failure, so the supervisor does not wait for a crash).
                raise ClientGone(response) from e
        scan.close()
        await response.write_eof()
        return response


class UsageScan:
    """Token usage read off an SSE answer as it streams: only the lines that may hold it are
    parsed, so a token's chunk costs two substring searches, or none (``recent``)."""

    def __init__(self, state: Forwarded) -> None:
        self._state = state
        self._pending = b""  # the start of an SSE line cut across chunks (the usage line may be)
        self._recent: collections.deque[bytes] = collections.deque(maxlen=RECENT_CHUNKS)
        # A chunk kept for later, unsearched (a bound C method: no Python call per token).  Only
        # a stream's last chunks carry its usage (OpenAI's last event; llama-server's final
        # ``timings``), so the fast lane's one-chunk reads are searched only when the answer
        # ends, or when a read of another kind comes, which keeps the order.
        self.recent = self._recent.append

    def feed(self, chunk: bytes) -> None:
        if self._recent:
            self._catch_up()
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        pending = self._pending
        if pending or not chunk.endswith(b"\n") or b'"usage"' in chunk or b'"timings"' in chunk:
            complete, _, pending = (pending + chunk).rpartition(b"\n")
            self._pending = b"" if len(pending) > _MAX_PENDING else pending
            _take_usage(self._state, complete)

    def _catch_up(self) -> None:
        recent = self._recent
        while recent:
            self._feed(recent.popleft())

    def close(self) -> None:
        self._catch_up()
        _take_usage(self._state, self._pending)
        self._pending = b""


def usage_of_whole(state: Forwarded, status: int, data: bytes) -> None:
    """Token usage of a whole (not streamed) JSON answer."""
    if status == 200 and b'"usage"' in data:
        state.usage = _usage(data)


def relay_headers(up: RunnerAnswer) -> CIMultiDict[str]:
    """The runner's response headers that may go on to the client (not this hop's)."""
    return CIMultiDict((k, v) for k, v in up.headers.items() if k.lower() not in _RESPONSE_SKIP)


def _take_usage(state: Forwarded, lines: bytes) -> None:
    if b'"usage"' in lines or b'"timings"' in lines:
        usage = _usage_from_sse(lines)
        if usage is not None and (state.usage is None or "usage" in usage):
            state.usage = usage


_DECODER = json.JSONDecoder()


def _member(data: bytes, key: bytes) -> Any:
    """The value of the last ``"key":`` member in *data*, parsed alone (not the whole answer:
    a long answer's text is most of its bytes); None if it is not there as a member."""
    at = data.rfind(key)
    if at <= 0 or data[at - 1 : at] == b"\\":
        return None
    colon = data.find(b":", at + len(key))
    if colon < 0 or data[at + len(key) : colon].strip():
        return None
    try:
        text = data[colon + 1 :].decode("utf-8").lstrip()
        value, _ = _DECODER.raw_decode(text)
    except ValueError:
        return None
    return value


PARSE_WHOLE_MAX = 64 * 1024  # answers up to this are parsed whole (orjson), longer ones not


def _usage(data: bytes) -> dict[str, Any] | None:
    """Token counts of one answer: OpenAI's ``usage``, else llama-server's ``timings`` (streamed
    answers carry only those unless the client asked for ``stream_options.include_usage``).
    A short answer is parsed whole, which orjson does faster than the stdlib reads the one
    member; a long one's text is most of its bytes, so only the member is parsed."""
    if len(data) <= PARSE_WHOLE_MAX:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = _stdlib_loads(data)  # json reads a little more (NaN, big integers)
    else:
        usage = _member(data, b'"usage"')
        if isinstance(usage, dict):
            return {**usage, "usage": True}
        timings = _member(data, b'"timings"')
        if isinstance(timings, dict):
            return _from_timings(timings)
        value = _stdlib_loads(data)
    if not isinstance(value, dict):
        return None
    usage = value.get("usage")
    if isinstance(usage, dict):
        return {**usage, "usage": True}
    timings = value.get("timings")
    return _from_timings(timings) if isinstance(timings, dict) else None


def _stdlib_loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _from_timings(timings: dict[str, Any]) -> dict[str, Any]:
    prompt = (timings.get("cache_n") or 0) + (timings.get("prompt_n") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": timings.get("predicted_n") or 0,
        "cached_tokens": timings.get("cache_n") or 0,
    }


def _usage_from_sse(chunk: bytes) -> dict[str, Any] | None:
    found = None
    for line in chunk.split(b"\n"):
        if line.startswith(b"data:") and (b'"usage"' in line or b'"timings"' in line):
            usage = _usage(line[5:].strip())
            if usage is not None and (found is None or "usage" in usage):
                found = usage
    return found


def error_event(state: Forwarded, error: ModelRunnerError) -> bytes:
    """What ends an answer under way with *error*: an SSE error event (OpenAI's), or the API
    family's own line (``state.error_line``)."""
    if state.error_line is not None:
        return state.error_line(error)
    kind = "timeout" if isinstance(error, UpstreamTimeout) else "server_error"
    payload = {"error": {"message": error.message, "type": kind, "code": error.code}}
    return f"data: {json.dumps(payload)}\n\n".encode()


async def write_stream_error(state: Forwarded, error: ModelRunnerError) -> None:
    """End an already-started answer with an error event (SSE) or a JSON line; never raises."""
    response = state.response
    if response is None:
        return
    data = error_event(state, error)
    try:
        await response.write(data)
        await response.write_eof()
    except (ConnectionError, RuntimeError, aiohttp.ClientError) as e:
        log.info("proxy.error_event_lost", error=repr(e))
