"""
The fast lane: OpenAI inference requests served straight off the listening socket.

Every connection starts on ``FrontConnection``, a plain ``asyncio.Protocol``.  When a request
head is complete it decides: a plain ``POST`` to an inference route (``fasthttp.parse_head``)
while the daemon is not draining, with a valid key where keys are asked for, is served here;
anything else hands the connection, bytes and all, to aiohttp's protocol
(``transport.set_protocol``), where the middleware, the routes and every other API family answer
as before, for the rest of that connection.  The inference route's work is the same as on
aiohttp's side (``openai_api.read_inference`` and ``inference.pass_through``); only the framing
differs.  The runner's answer goes from ``upstream.RunnerConnection``'s ``data_received`` straight
to the client's transport: a streamed token costs a read and a write, with no task switch, no
stream reader and no response object.  Back-pressure: a client that reads slowly pauses the
runner's connection.  What this saves is measured in ``docs/benchmarks.md`` (Proxy).  A chat
request that forces a tool call is the one whose answer must be translated (``forced_tools``):
once its body is read, it goes back to aiohttp, head, body and connection (``hand_back``).

Owns the front connections and their request tasks (cancelled when a client leaves, which
closes the runner's connection and stops generation).  The runner connection pool is the app's
(``proxy.UpstreamPool.runners``), shared with aiohttp's lane.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp.web_server import Server

from modelrunner.errors import ModelRunnerError, UpstreamTimeout
from modelrunner.logs import access_line
from modelrunner.runners.model import Mode
from modelrunner.server.api.openai_api import BACKENDS, CHAT, INFERENCE, PREFIXES, read_inference
from modelrunner.server.auth import key_in
from modelrunner.server.header_guard import (
    GuardedAppRunner,
    GuardedServer,
    HeaderGuard,
    refuse_on,
)
from modelrunner.server.hosts import arrived_at_loopback
from modelrunner.server.middleware import RequestTimeout, error_body, retry_headers, unhandled
from modelrunner.server.relay import fasthttp, inference
from modelrunner.server.relay.proxy import Forwarded, UsageScan, error_event, usage_of_whole
from modelrunner.server.relay.upstream import RunnerConnection, UpstreamClosed
from modelrunner.server.state import STATE

if TYPE_CHECKING:
    from modelrunner.runners.supervisor import Runner
    from modelrunner.server.state import ServerState

log = structlog.get_logger(__name__)

KEEPALIVE_S = 75.0  # an idle keep-alive connection is closed after this (aiohttp's default)
SWEEP_S = 5.0  # how often idle connections are looked for
MAX_BUFFERED = 1 << 20  # bytes read ahead of the request being served (pipelining)


@dataclass(frozen=True, slots=True)
class Route:
    mode: Mode
    upstream_path: str
    canonical: str  # the route's name in the metrics, as aiohttp's router names it
    chat: bool  # to the runner's chat completions (where a tool call can be forced)
    backend: str | None = None  # the backend /engines/<backend>/… names, if it names one


def routes() -> dict[str, Route]:
    """Every concrete path of the OpenAI inference routes, to what serves it."""
    table: dict[str, Route] = {}
    for prefix in PREFIXES:
        for suffix, mode, upstream in INFERENCE:
            for backend in BACKENDS if "{backend}" in prefix else ("",):
                route = Route(mode, upstream, prefix + suffix, upstream == CHAT, backend or None)
                table[prefix.replace("{backend}", backend) + suffix] = route
    return table


class FastLane:
    """The daemon's fast lane: its state, routes, runner pool and open front connections."""

    def __init__(self, state: ServerState, guard: HeaderGuard) -> None:
        server = state.config.server
        self.state = state
        self.guard = guard
        self.routes = routes()
        self.pool = state.upstream.runners  # the one pool of runner connections (app's)
        self.hold_s = server.stream_coalesce_ms / 1000  # upstream.RunnerConnection.hold_s
        self.connections: set[FrontConnection] = set()
        self.waiting: set[Exchange] = set()  # for the runner's answer (see _sweep_now)
        self.loop = asyncio.get_running_loop()  # once: each lookup is a getpid() syscall
        self._sweep: asyncio.TimerHandle | None = None

    def add(self, conn: FrontConnection) -> None:
        self.connections.add(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._sweep_s(), self._sweep_now)

    def _sweep_s(self) -> float:
        read_timeout_s = self.state.config.server.upstream_read_timeout_s
        return min(SWEEP_S, read_timeout_s / 4) if read_timeout_s else SWEEP_S

    def _sweep_now(self) -> None:
        """One timer for every connection, rather than timers set and cancelled per request:
        close the keep-alive connections idle for KEEPALIVE_S, and fail the requests whose
        runner has sent nothing for ``server.upstream_read_timeout_s`` (silence, not length)."""
        self._sweep = None
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.idle_before(now - KEEPALIVE_S):
                conn.close()
        read_timeout_s = self.state.config.server.upstream_read_timeout_s
        if read_timeout_s:
            for exchange in list(self.waiting):
                exchange.check_silence(now, read_timeout_s)
        if self.connections:
            self._sweep = self.loop.call_later(self._sweep_s(), self._sweep_now)

    def serves(self, head: fasthttp.Head, unix: bool, loopback: bool | None) -> Route | None:
        """The route of a request the fast lane takes, else None (aiohttp's).  *loopback*:
        where the connection arrived (``hosts.arrived_at_loopback``)."""
        state = self.state
        server = state.config.server
        route = self.routes.get(head.path)
        if route is None or state.drain.draining or head.length > server.max_body_bytes:
            return None
        if not state.hosts.allows(head.headers.get("Host"), loopback=loopback):
            return None  # aiohttp answers the 403
        keys = state.api_keys
        if keys and not unix:
            presented = key_in(head.headers)
            if presented is None or not keys.accepts(presented):
                return None  # aiohttp answers the 401
        return route

    async def close(self) -> None:
        """Close every front connection (after the drain); the runner pool is the app's."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self.connections):
            conn.close()

    async def serve(self, conn: FrontConnection, head: fasthttp.Head, route: Route) -> None:
        """One request, from its body to the access log line."""
        started = time.perf_counter()
        state = self.state
        exchange = Exchange(self, conn, head, route)
        status = 500
        handed = False
        task = asyncio.current_task(self.loop)
        if task is not None:
            state.drain.enter(task)
        try:
            body = conn.take_body(head.length)  # whole in the first read, as a rule
            if body is None:
                body = await conn.body(head.length, state.config.server.body_timeout_s)
            got = await read_inference(
                state, body, route.mode, head.headers, route.backend, chat=route.chat
            )
            if got.forced is not None:
                handed = True  # aiohttp's lane translates the answer (and logs the request)
                conn.hand_back(body)
                return
            exchange.stream = got.stream
            exchange.model = got.name
            exchange.request_body = body
            exchange.forwarded.payload = got.payload
            status = await inference.pass_through(
                state,
                head,
                got.model.id,
                got.name,
                route.mode,
                body,
                got.keep_alive_s,
                exchange,
                exchange.forwarded,
                preload_only=got.preload_only,
            )
        except ModelRunnerError as e:
            status = e.status
            exchange.refuse(e)
        except asyncio.CancelledError:
            status = 499  # the client went away (or the drain's cut, below)
            if exchange.started() or task is None or not state.drain.was_cut():
                raise
            status = 503
            exchange.refuse(state.drain.cut_error(), close=True)
        except Exception as e:  # noqa: BLE001 - the last line of defence, as the middleware's
            exchange.refuse_raw(500, unhandled("POST", head.path, e), "internal_error")
            exchange.close_cut()
        finally:
            if task is not None:
                state.drain.leave(task)
            if not handed:
                elapsed = time.perf_counter() - started
                state.metrics.observe_request("POST", route.canonical, status, elapsed)
                access_line("POST", head.path, status, round(elapsed * 1000, 2))


_STARTS: dict[tuple[int, tuple[tuple[str, str], ...], bool], tuple[bytes, str]] = {}
STARTS_MAX = 64


def answer_start(
    status: int, headers: tuple[tuple[str, str], ...], chunked: bool
) -> tuple[bytes, str]:
    """The start of the client's answer head for a runner's answer (its headers less this
    hop's; SSE told not to be buffered or cached), and the answer's content type.  Once per
    distinct runner head: they repeat."""
    key = (status, headers, chunked)
    known = _STARTS.get(key)
    if known is not None:
        return known
    out = [(k, v) for k, v in headers if k.lower() not in fasthttp.RESPONSE_SKIP]
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
    if chunked and "text/event-stream" in ctype:
        out += [("X-Accel-Buffering", "no"), ("Cache-Control", "no-cache")]
    if len(_STARTS) >= STARTS_MAX:
        _STARTS.clear()
    _STARTS[key] = known = (fasthttp.head_start(status, out), ctype)
    return known


class Exchange:
    """One request's lane (``inference.Lane``) and the runner answer's sink (``upstream.Sink``).

    The answer is relayed as it is parsed: a whole one in one write once complete, a chunked
    one chunk by chunk as each arrives."""

    upstream_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    def __init__(self, lane: FastLane, conn: FrontConnection, head: fasthttp.Head, route: Route):
        self._lane = lane
        self._conn = conn
        self._head = head
        self._route = route
        self.stream = False
        self.model = ""  # the model's display name, for the UpstreamTimeout of a silent runner
        self.request_body = b""
        self._started = False
        self.forwarded = Forwarded()  # what pass_through and this relay record
        self._whole: list[bytes] | None = None
        self._status = 0
        self._start = b""  # the client's answer head but its framing (fasthttp.head_start)
        self._scan = UsageScan(self.forwarded)
        self._out: list[bytes] = []  # chunks of one read, written on in one go (flush)
        self._done: asyncio.Future[None] | None = None
        self._up: RunnerConnection | None = None
        self._sent_at = 0.0
        self._seen = (0, 0.0)  # the answer's bytes at the last silence check, and when they grew
        self._ended = False

    # -- inference.Lane

    @property
    def upstream_path(self) -> str:
        return self._route.upstream_path

    def started(self) -> bool:
        return self._started

    async def forward(self, runner: Runner, forwarded: Forwarded) -> int:
        pool = self._lane.pool
        socket_path = runner.socket_path
        body = self.request_body if forwarded.upstream_body is None else forwarded.upstream_body
        request = fasthttp.runner_request(
            self._route.upstream_path, self._head, body, stream=self.stream
        )
        for pooled in pool.connections(socket_path):
            up = pooled or await pool.connect(socket_path)
            try:
                await self._exchange(up, request)
            except UpstreamClosed:
                if pooled is not None and up.received == 0:
                    continue  # a keep-alive connection the runner had closed: the next one
                raise
            finally:
                self._conn.upstream = None
                if not self._ended:
                    up.close()  # the client left, or the answer broke: generation stops
            pool.release(socket_path, up)
            return self._status
        raise UpstreamClosed("no connection to the runner")  # not reached: the last is fresh

    def preloaded(self) -> int:
        start = fasthttp.head_start(200, ())
        self._conn.write_whole(fasthttp.answer_head(start, length=0, close=self._head.close))
        return 200

    def gone(self, error: BaseException) -> int | None:
        return None  # a client that leaves cancels the task instead

    async def end_with(self, forwarded: Forwarded, error: ModelRunnerError) -> int:
        if not self._ended:
            self._ended = True
            self.flush()
            self._conn.end_answer(
                fasthttp.chunk(error_event(forwarded, error)) + fasthttp.LAST_CHUNK
            )
        return self._status

    # -- the runner's answer (upstream.Sink)

    async def _exchange(self, up: RunnerConnection, request: bytes) -> None:
        lane = self._lane
        self._done = done = lane.loop.create_future()
        self._conn.upstream = up
        self._up = up
        up.hold_s = lane.hold_s if self.stream else 0.0
        up.pump_target = self._pump_target if self.stream else None
        self._sent_at = time.monotonic()
        up.send(request, self)
        lane.waiting.add(self)
        try:
            await done
        finally:
            lane.waiting.discard(self)

    def check_silence(self, now: float, timeout_s: float) -> None:
        """Fail the request if the runner has sent nothing for *timeout_s*."""
        up = self._up
        if up is None:
            return
        if up.received != self._seen[0]:  # a pump's reads do not set last_rx: they count
            self._seen = (up.received, now)
        if now - max(up.last_rx, self._sent_at, self._seen[1]) >= timeout_s:
            # Our error, not a TimeoutError: a late answer is a 504, not a failed runner's 503.
            self.lost(UpstreamTimeout(self.model, timeout_s))

    def head(self, status: int, headers: tuple[tuple[str, str], ...], chunked: bool) -> None:
        self._status = status
        self._start, ctype = answer_start(status, headers, chunked)
        if not chunked:
            self._whole = []
            return
        self._started = True
        forwarded = self.forwarded
        forwarded.started_status = status
        forwarded.started_type = ctype
        forwarded.streaming = True
        # Written with the read's first chunks (flush, at the end of the same read): one write.
        self._out.append(fasthttp.answer_head(self._start, length=None, close=self._head.close))

    def body(self, data: bytes) -> None:
        whole = self._whole
        if whole is not None:
            whole.append(data)
            return
        tap = self.forwarded.tap
        if tap is not None:
            tap(data)
        self._scan.feed(data)

    def frames(self, data: bytes) -> None:
        self._out.append(data)

    def token(self, data: bytes, payload: bytes) -> None:
        out = self._out
        if out:  # the answer's head, read on its own before this
            out.append(data)
            self.flush()
        else:
            transport = self._conn.transport
            if transport is not None:
                transport.write(data)
        self.relayed(payload)

    def relayed(self, payload: bytes) -> None:
        """A one-chunk read's payload, written on: to the request log, kept for the usage.
        Also called by a pump's thread (relay/pump.py), while the loop leaves this exchange be."""
        tap = self.forwarded.tap
        if tap is not None:
            tap(payload)
        self._scan.recent(payload)

    def _pump_target(self) -> tuple[int, Callable[[bytes], None]] | None:
        """The client socket a pump may write this stream to (``upstream.PumpTarget``)."""
        transport = self._conn.transport
        if self._out or transport is None or transport.is_closing():
            return None
        if transport.get_write_buffer_size():
            return None
        sock = transport.get_extra_info("socket")
        return None if sock is None else (sock.fileno(), self.relayed)

    def flush(self) -> None:
        out = self._out
        if out:
            self._conn.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def end(self) -> None:
        self._ended = True
        whole = self._whole
        if whole is not None:
            data = b"".join(whole)
            head = fasthttp.answer_head(self._start, length=len(data), close=self._head.close)
            self._conn.write_whole(head + data)  # first: the accounting is not on its path
            usage_of_whole(self.forwarded, self._status, data)
            self.forwarded.answer = (self._status, data)
        else:
            self._scan.close()
            self._out.append(fasthttp.LAST_CHUNK)
            self._conn.end_answer(b"".join(self._out))
            self._out.clear()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def lost(self, exc: BaseException) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    # -- answers of this daemon's own

    def refuse(self, error: ModelRunnerError, *, close: bool = False) -> None:
        """An error before the answer began, in the route's shape (OpenAI's)."""
        if self._started:
            return
        extra = list((retry_headers(error) or {}).items())
        self.refuse_raw(error.status, error.message, error.code, extra, close=close)

    def close_cut(self) -> None:
        """An answer that broke off mid-way cannot be mended: the connection closes after it."""
        if self._started and not self._ended:
            self._conn.close()

    def refuse_raw(
        self,
        status: int,
        message: str,
        code: str,
        extra: list[tuple[str, str]] | None = None,
        *,
        close: bool = False,
    ) -> None:
        if self._started:
            return
        body = json.dumps(error_body(self._head.path, status, message, code)).encode()
        headers = [("Content-Type", "application/json; charset=utf-8"), *(extra or [])]
        close = close or self._conn.closing
        head = fasthttp.answer_head(
            fasthttp.head_start(status, headers), length=len(body), close=close
        )
        self._conn.write_whole(head + body, close=close)


class FrontConnection(asyncio.Protocol):
    """A client connection: fast-lane requests one at a time, or handed over to aiohttp."""

    def __init__(self, lane: FastLane, fallback: Callable[[], asyncio.Protocol]) -> None:
        self._lane = lane
        self._fallback = fallback
        self.transport: asyncio.Transport | None = None
        self.upstream: RunnerConnection | None = None  # paused while the client reads slowly
        self._unix = False
        self._loopback: bool | None = None  # where it arrived (hosts.arrived_at_loopback)
        self._buf = b""
        self._task: asyncio.Task[None] | None = None
        self._body_wait: asyncio.Future[None] | None = None
        self._need = 0
        self._complete = True  # the last answer was written whole
        self._close_after = False
        self._paused = False
        self._idle_since: float | None = None  # between requests, since when
        self._head = b""  # the head of the request being served, for hand_back
        self._linger: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream socket's transport
        sock = transport.get_extra_info("socket")
        self._unix = sock is not None and sock.family == socket.AF_UNIX
        if not self._unix:
            self._loopback = arrived_at_loopback(transport.get_extra_info("sockname"))
        self._lane.add(self)
        self._lane.guard.arm(self)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            return  # refused: drained and dropped
        if self._task is not None:
            self._buf += data
            if self._need and len(self._buf) >= self._need and self._body_wait is not None:
                if not self._body_wait.done():
                    self._body_wait.set_result(None)
            elif not self._need and len(self._buf) > MAX_BUFFERED and self.transport:
                self.transport.pause_reading()  # a client pipelining far ahead waits
            return
        self._idle_since = None
        self._buf += data
        self._next()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lane.connections.discard(self)
        self._lane.guard.disarm(self)
        if self._linger is not None:
            self._linger.cancel()
        self.transport = None
        if self._task is not None:
            self._task.cancel()  # handler cancellation: the runner's connection closes

    def pause_writing(self) -> None:
        self._paused = True
        if self.upstream is not None:
            self.upstream.pause()

    def resume_writing(self) -> None:
        self._paused = False
        if self.upstream is not None:
            self.upstream.resume()

    # -- header guard (header_guard.Pending)

    def refuse(self, message: str) -> None:
        if self._linger is None:
            self._linger = refuse_on(self.transport, message, self.close)
        else:
            self.close()

    # -- requests

    def _next(self) -> None:
        """Serve the buffered request if its head is complete, or hand the connection over."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if fasthttp.incomplete_is_aiohttps(buf):
                self._hand_over()
            else:
                # Only a head that did not come whole gets a deadline: most do, in one read.
                self._lane.guard.arm(self)
            return
        raw = buf[:end]
        head = fasthttp.parse_head(raw)
        route = self._lane.serves(head, self._unix, self._loopback) if head is not None else None
        if head is None or route is None:
            self._hand_over()
            return
        self._lane.guard.disarm(self)
        self._head = raw
        self._buf = buf[end + 4 :]
        self._complete = False
        self._close_after = head.close
        self._task = task = self._lane.loop.create_task(self._lane.serve(self, head, route))
        task.add_done_callback(self._served)

    def take_body(self, length: int) -> bytes | None:
        """The request's body of *length* bytes if it has all arrived, else None."""
        return self._split(length) if len(self._buf) >= length else None

    def _split(self, length: int) -> bytes:
        body, self._buf = self._buf[:length], self._buf[length:]  # a whole buffer: not copied
        return body

    async def body(self, length: int, timeout_s: float) -> bytes:
        """The request's body of *length* bytes, within *timeout_s* (0: no limit)."""
        if len(self._buf) < length:
            self._need = length
            self._body_wait = self._lane.loop.create_future()
            try:
                async with asyncio.timeout(timeout_s or None):
                    await self._body_wait
            except TimeoutError:
                self._close_after = True
                raise RequestTimeout(
                    f"request body not received within {timeout_s:g}s (server.body_timeout_s)"
                ) from None
            finally:
                self._need = 0
                self._body_wait = None
        return self._split(length)

    def _served(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("fastlane.request_failed", error=repr(task.exception()))
        transport = self.transport
        if transport is None:
            return
        if not self._complete or self._close_after:
            transport.close()  # an answer cut short cannot be followed by another
            return
        transport.resume_reading()
        if self._buf:
            self._next()
        else:
            self._idle_since = time.monotonic()  # closed by the lane's sweep after KEEPALIVE_S

    def hand_back(self, body: bytes) -> None:
        """The request being served, whose head and *body* were read, goes to aiohttp with the
        connection, as if it had never been read (its request task just ends)."""
        self._buf = self._head + b"\r\n\r\n" + body + self._buf
        self._hand_over()

    def _hand_over(self) -> None:
        """aiohttp's from here on: its protocol gets the transport and the bytes read so far."""
        transport = self.transport
        self.transport = None  # nothing here writes to it any more (a request task that ends)
        self._lane.connections.discard(self)
        self._lane.guard.disarm(self)
        if transport is None:
            return
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._paused:
            protocol.pause_writing()
        data, self._buf = self._buf, b""
        transport.resume_reading()
        protocol.data_received(data)

    # -- writing the answer

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def end_answer(self, data: bytes) -> None:
        self._complete = True
        self.write(data)

    def write_whole(self, data: bytes, *, close: bool = False) -> None:
        self._complete = True
        self._close_after = self._close_after or close
        self.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def closing(self) -> bool:
        """This connection closes after its current answer (the client asked, or its body
        could not be read whole)."""
        return self._close_after

    def idle_before(self, deadline: float) -> bool:
        """Between requests since before *deadline* (monotonic)."""
        return self._task is None and self._idle_since is not None and self._idle_since < deadline


class FastServer(GuardedServer):
    """aiohttp's server whose connections start on the fast lane (``FrontConnection``)."""

    lane: FastLane

    def __call__(self) -> FrontConnection:  # type: ignore[override]
        return FrontConnection(self.lane, super().__call__)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's
        await super().shutdown(timeout)
        await self.lane.close()


class FastAppRunner(GuardedAppRunner):
    """The daemon's runner with the fast lane in front of aiohttp (``server.fast_lane``)."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = FastServer
        server.lane = FastLane(self.app[STATE], self.header_guard)  # type: ignore[attr-defined]
        return server
