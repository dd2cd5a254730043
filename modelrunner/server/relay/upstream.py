"""
A minimal HTTP/1.1 client for llama-server's Unix socket: the fast lane's way to a runner.

aiohttp's client costs about as much CPU per request as the whole budget of the hot path
(request and response objects, a stream reader, a timer and a task wake-up per chunk), so the
fast lane (``server/fastlane.py``) talks to runners through this protocol instead: one write per
request, and the answer parsed in ``data_received`` and handed to a synchronous ``Sink`` piece
by piece, with no task switch per token.  It understands exactly what llama-server sends:
``Content-Length`` bodies, ``Transfer-Encoding: chunked`` (its SSE) and bodies that end with the
connection.  Idle keep-alive connections are pooled per socket.  Knows nothing of aiohttp's
server, models or routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import httptools

from modelrunner.server.relay.fasthttp import ByRestOfHead, one_chunk
from modelrunner.server.relay.hangups import Hangups
from modelrunner.server.relay.pump import Pump, Pumps

STALE_RETRIES = 3
MAX_IDLE_PER_SOCKET = 8
IDLE_S = 60.0  # an idle pooled connection older than this is closed, not reused
MAX_HEAD = 64 * 1024
HOLD_GROWTH = 8  # a stream that stays quick is held up to this many times hold_s at a time
HOLD_STEP = 4  # each next hold of a quick stream this many times the last (2, 8, 16 ms)
# What a hold should gather at most: llama-server writes a chunk per token, and an AF_UNIX
# socket takes only about 40 small writes that nobody reads (~10 KiB of tokens) before the
# writer blocks; a hold past that stalls the runner's answer (and its end then waits for the
# hold's timer, not the hang-up).  Each next hold is sized from what the last one gathered.
HOLD_TARGET_BYTES = 4 * 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
PUMP_AFTER = (
    2  # slow one-chunk reads in a row before a stream goes to a pump (server/relay/pump.py)
)
# Where a pump writes a streamed answer: the client socket's fd and the sink's tap for each
# chunk's payload, or None while the client's transport holds unwritten bytes.
PumpTarget = Callable[[], "tuple[int, Callable[[bytes], None]] | None"]


class UpstreamClosed(ConnectionError):
    """The runner closed the connection (or it broke) before its answer was complete."""


class Sink(Protocol):
    """Where one answer goes, as it is parsed (all called on the loop, none may block)."""

    def head(self, status: int, headers: tuple[tuple[str, str], ...], chunked: bool) -> None:
        """The answer's status and headers (not Content-Length: the framing is the relay's);
        *chunked*: its body comes piece by piece (``frames``), else whole (``body``)."""
        ...

    def body(self, data: bytes) -> None:
        """Bytes of the answer's body (a chunked one's payloads, those of one read together),
        as they are parsed."""
        ...

    def frames(self, data: bytes) -> None:
        """A chunked answer's body as chunks to relay: complete ones as the runner framed them."""
        ...

    def token(self, data: bytes, payload: bytes) -> None:
        """A read that is one whole chunk (*data*, as framed; *payload*, its body): relay it now.
        A real model's stream is one token per read, so this is its whole per-token path: no
        ``body``, ``frames`` or ``flush``."""
        ...

    def flush(self) -> None:
        """The end of what one read brought: relay what ``body`` collected."""
        ...

    def end(self) -> None: ...

    def lost(self, exc: BaseException) -> None: ...


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class RunnerConnection(asyncio.Protocol):
    """One connection to a runner, one exchange at a time; parses the answer into its sink."""

    def __init__(self, hangups: Hangups | None = None, pumps: Pumps | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink: Sink | None = None
        self.closed = False
        self.reusable = False  # set once an answer ended cleanly with keep-alive
        self.received = 0  # bytes of the current answer so far (0: a stale connection)
        self.last_rx = 0.0
        self.idle_since = 0.0
        self._state = _DONE
        self._buf = b""
        self._left = 0
        self._keep_alive = True
        self.hold_s = 0.0  # see data_received; 0: every read is relayed at once
        self._held = False  # reading paused for hold_s
        self._hold = 0.0  # the current hold (grows while the stream stays quick)
        self._released = -1.0  # when the last hold ended (monotonic)
        self._loop: asyncio.AbstractEventLoop | None = None  # set by connection_made
        self._blocked = False  # reading paused by the client's back-pressure
        self._hangups = hangups  # the pool's: ends a hold when the runner closes meanwhile
        self._fd = -1  # the socket's, once watched for a hang-up (the first hold)
        self._gone = False  # the runner hung up (what it sent before is still to be read)
        self._pumps = pumps  # the pool's: a slow stream's tokens copied by a thread
        self.pump_target: PumpTarget | None = None  # set by the sink's lane, for a stream
        self._pump: Pump | None = None  # copying now: reading is paused on the loop
        self._slow = 0  # slow one-chunk reads in a row

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a Unix stream: a Transport
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.reusable = False
        if self._fd >= 0 and self._hangups is not None:
            self._hangups.forget(self._fd, self._hung_up)
        if self._state == _UNTIL_CLOSE:
            self._finish()
            return
        sink, self.sink = self.sink, None
        if sink is not None and self._state != _DONE:
            sink.lost(exc or UpstreamClosed("the runner closed the connection"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        # Quick: less than hold_s since the last read, or since a hold ended (what came while
        # held is read right after it).
        quick = now - max(self.last_rx, self._released) < self.hold_s
        self.last_rx = now
        self.received += len(data)
        sink = self.sink
        if self._state == _CHUNK_SIZE and not self._buf and sink is not None:
            # One whole chunk, framed as llama-server frames (its size in lower-case hex without
            # leading zeros): a real model's token, relayed with the fewest steps (the per-token
            # cost is most of a stream's, docs/benchmarks.md "Proxy on a real model").
            start = one_chunk(data)
            if start:
                sink.token(data, data[start:-2])
                if quick:
                    self._slow = 0
                    self._hold_on(len(data))
                else:
                    self._hold = 0.0
                    self._slow += 1
                    if self._slow >= PUMP_AFTER and self.pump_target is not None:
                        self._start_pump(self.pump_target)
                return
        self._slow = 0
        if self._buf:
            data = self._buf + data
            self._buf = b""
        state = self._state
        if state == _HEAD:
            self._head(data)
        elif state == _LENGTH:
            self._length(data)
        elif state == _UNTIL_CLOSE:
            if self.sink is not None:
                _piece(self.sink, data)
        elif state != _DONE:
            self._chunks(data)
        sink = self.sink
        if sink is not None:
            sink.flush()
            if quick:
                self._hold_on(len(data))
            else:
                self._hold = 0.0

    def _hold_on(self, batch: int) -> None:
        """Tokens are coming faster than hold_s apart: let the next ones gather in the socket, to be
        read and written on in one go (a read and a write per token were most of a streamed token's
        cost).  The first hold is hold_s, each next one HOLD_STEP times as long up to HOLD_GROWTH
        times (a wake-up per read is what a fast stream costs), and no longer than would gather
        ``HOLD_TARGET_BYTES`` at the pace of the last read (*batch* bytes).  A slower stream (a real
        model's tokens, tens of ms apart) is never held, nor a stream whose runner has hung up: the
        rest of its answer is in the socket already."""
        if self._held or self._gone or self.transport is None or self._loop is None:
            return
        last = self._hold
        if not last:
            hold = self.hold_s
        else:
            hold = min(last * HOLD_STEP, last * HOLD_TARGET_BYTES / max(batch, 1))
            hold = max(min(hold, self.hold_s * HOLD_GROWTH), self.hold_s / HOLD_GROWTH)
        self._hold = hold
        self._held = True
        self.transport.pause_reading()
        self._loop.call_later(hold, self._release)
        if self._fd < 0 and self._hangups is not None:
            self._watch(self._hangups)

    def _start_pump(self, target: PumpTarget) -> None:
        """Hand the stream's reading to a pump thread (server/relay/pump.py), if one is free and
        nothing is waiting to be written either way."""
        pumps, transport, loop = self._pumps, self.transport, self._loop
        if pumps is None or transport is None or loop is None or self._blocked or self._held:
            return
        if transport.get_write_buffer_size() or self._gone:
            return
        client = target()
        sock = transport.get_extra_info("socket")
        if client is None or sock is None:
            return
        client_fd, relayed = client
        pump = Pump(self, sock.fileno(), client_fd, relayed, self.hold_s)
        transport.pause_reading()
        done = pumps.start(pump, loop)
        if done is None:
            pump.close()
            transport.resume_reading()
            return
        self._pump = pump
        done.add_done_callback(lambda d: self._pumped(pump, d))

    def _pumped(self, pump: Pump, done: asyncio.Future[tuple[bytes, bytes]]) -> None:
        """The pump stopped: the loop reads on, from what it left."""
        self._pump = None
        self._slow = 0
        pump.close()
        rest, unsent = (b"", b"") if done.cancelled() or done.exception() else done.result()
        sink = self.sink
        if self.closed or sink is None or self.transport is None:
            return
        if unsent:
            sink.frames(unsent)
            sink.flush()
        if not self._blocked and not self._held:
            self.transport.resume_reading()
        if rest:
            self.data_received(rest)

    def _watch(self, hangups: Hangups) -> None:
        """The runner closing this connection (as llama-server does after a stream's last
        chunk) ends a hold at once: the answer's end is not kept waiting for the timer."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            self._fd = sock.fileno()
            hangups.watch(self._fd, self._hung_up)

    def _hung_up(self) -> None:
        # Noted even when not held: the hang-up may come in the same turn of the loop as the
        # read before it, which would otherwise hold the answer's end for the whole timer.
        self._gone = True
        if self._held:
            self._release()

    def _release(self) -> None:
        self._held = False
        self._released = time.monotonic()
        if (
            self._pump is None
            and not self._blocked
            and self.transport is not None
            and not self.closed
        ):
            self.transport.resume_reading()

    # -- the exchange

    def send(self, request: bytes, sink: Sink) -> None:
        """Write one whole request; its answer goes to *sink*."""
        self.sink = sink
        self.reusable = False
        self.received = 0
        self.last_rx = 0.0
        self._hold = 0.0
        self._released = -1.0  # the first token is never held
        self._slow = 0
        self._state = _HEAD
        self._buf = b""
        if self._blocked:  # the last client's back-pressure is not this one's
            self.resume()
        if self.transport is None or self.closed:
            sink.lost(UpstreamClosed("the runner closed the connection"))
            return
        self.transport.write(request)

    def close(self) -> None:
        """Drop the connection now (a client that left: llama-server stops generating)."""
        self.sink = None
        self._state = _DONE
        if self._pump is not None:
            self._pump.stop()  # before the loop's close: it writes nothing after this
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        """The client reads slowly: stop reading the runner until ``resume``."""
        self._blocked = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        self._blocked = False
        if not self._held and self._pump is None and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- parsing

    def _head(self, data: bytes) -> None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD:
                self._fail("the runner sent an answer head over 64 KiB")
                return
            self._buf = data
            return
        head = answer_head(data[:end])
        if isinstance(head, str):
            self._fail(head)
            return
        status, headers, length, chunked, self._keep_alive = head
        sink = self.sink
        if sink is None:
            return
        sink.head(status, headers, chunked or length is None)
        rest = data[end + 4 :]
        if chunked:
            self._state = _CHUNK_SIZE
            self._chunks(rest)
        elif length is not None:
            self._state = _LENGTH
            self._left = length
            self._length(rest)
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
            if rest:
                _piece(sink, rest)

    def _length(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            return
        if len(data) >= self._left:
            piece, self._left = data[: self._left], 0
            if piece:
                sink.body(piece)
            self._finish()
        else:
            self._left -= len(data)
            if data:
                sink.body(data)

    def _whole_chunks(self, data: bytes) -> int:
        """The common case, fast: complete chunks, their payloads to ``body`` in one piece and
        their framing relayed as it came (``frames``): a read of several tokens costs the sink
        two calls, not two per token.  One ``split`` finds them all: a chunk whose size line is
        not its payload's length in lower-case hex without leading zeros (the way llama-server
        frames), or whose payload holds a CRLF, ends it.  Returns where it stopped (a partial
        chunk, the last chunk, or anything unusual: ``_chunks`` takes over from there)."""
        sink = self.sink
        if sink is None:
            return 0
        parts = data.split(b"\r\n")
        limit = (len(parts) - 1) // 2  # (size, payload) pairs followed by a CRLF
        k = 0
        while k < limit:
            payload = parts[2 * k + 1]
            if not payload or parts[2 * k] != b"%x" % len(payload):
                break
            k += 1
        if not k:
            return 0
        done = parts[: 2 * k]
        pos = sum(map(len, done)) + 4 * k
        sink.body(b"".join(done[1::2]))
        sink.frames(data[:pos])
        return pos

    def _chunks(self, data: bytes) -> None:
        """Chunked framing: each chunk's payload to the sink, the zero chunk ends the answer."""
        pos = self._whole_chunks(data) if self._state == _CHUNK_SIZE else 0
        size = len(data)
        while pos < size and self.sink is not None:
            state = self._state
            if state == _CHUNK_SIZE:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._buf = data[pos:]
                    return
                digits = data[pos:eol].split(b";", 1)[0].strip()
                if not _HEX.fullmatch(digits):
                    self._fail("the runner sent a malformed chunk size")
                    return
                self._left = int(digits, 16)
                pos = eol + 2
                self._state = _CHUNK_DATA if self._left else _TRAILER
            elif state == _CHUNK_DATA:
                take = min(self._left, size - pos)
                _piece(self.sink, data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if size - pos < 2:
                    self._buf = data[pos:]
                    return
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._buf = data[pos:]
                    return
                if eol == pos:  # the blank line after the (usually absent) trailers
                    self._finish()
                    return
                pos = eol + 2
            else:
                return

    def _finish(self) -> None:
        self._state = _DONE
        self.reusable = self._keep_alive and not self.closed
        self.idle_since = time.monotonic()
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.end()

    def _fail(self, message: str) -> None:
        sink, self.sink = self.sink, None
        self._state = _DONE
        if self.transport is not None:
            self.transport.abort()
        if sink is not None:
            sink.lost(UpstreamClosed(message))


def _piece(sink: Sink, data: bytes) -> None:
    """Part of a body that is relayed as a chunk of its own (a partial chunk, or an answer
    that ends with the connection)."""
    sink.body(data)
    sink.frames(b"%x\r\n%b\r\n" % (len(data), data))


Parsed = tuple[int, tuple[tuple[str, str], ...], int | None, bool, bool]


def answer_head(raw: bytes) -> Parsed | str:
    """An answer's head as (status, headers but Content-Length, length, chunked, keep-alive),
    or what is wrong with it; each distinct head is parsed once (``ByRestOfHead``)."""
    parsed = _heads(raw)
    return parsed if parsed is not None else _answer_head(raw)


class _Fields:
    """httptools' callbacks for one answer head: its header fields, as sent."""

    __slots__ = ("done", "fields")

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def _answer_head(raw: bytes) -> Parsed | str:
    """llhttp's parse of an answer head (``httptools``: the grammar aiohttp's client uses)."""
    if not raw.startswith(b"HTTP/1."):
        first = raw.partition(b"\r\n")[0]
        return f"the runner sent no HTTP status line: {first[:80]!r}"
    fields = _Fields()
    parser = httptools.HttpResponseParser(fields)
    try:
        parser.feed_data(raw + b"\r\n\r\n")
    except httptools.HttpParserError as e:
        return f"the runner sent a malformed answer head ({e}): {raw[:80]!r}"
    if not fields.done:
        return f"the runner sent an incomplete answer head: {raw[:80]!r}"
    headers: list[tuple[str, str]] = []
    length: int | None = None
    chunked = False
    for name, value in fields.fields:
        lower = name.lower()
        if lower == b"content-length":
            length = int(value)  # llhttp refused a bad or a second one
            continue
        text = value.decode("latin-1").strip()
        if lower == b"transfer-encoding":
            chunked = "chunked" in text.lower()
        headers.append((name.decode("latin-1"), text))
    return (parser.get_status_code(), tuple(headers), length, chunked, parser.should_keep_alive())


class RunnerPool:
    """Idle keep-alive connections per runner socket; a runner that is gone leaves none."""

    def __init__(self, *, connect_timeout_s: float, pump_threads: int = 0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.pumps = Pumps(pump_threads) if pump_threads else None
        self._idle: dict[Path, list[RunnerConnection]] = {}
        self._warming: dict[Path, asyncio.Task[None]] = {}
        self.hangups = Hangups()  # one epoll set for all held connections

    def take_idle(self, socket_path: Path) -> RunnerConnection | None:
        """A pooled connection still open and not too old, else None."""
        idle = self._idle.get(socket_path)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        self._idle.pop(socket_path, None)  # a runner that stopped leaves no entry behind
        return None

    async def connect(self, socket_path: Path) -> RunnerConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s or None):
            _, conn = await loop.create_unix_connection(
                lambda: RunnerConnection(self.hangups, self.pumps), str(socket_path)
            )
        return conn

    def connections(self, socket_path: Path) -> Iterator[RunnerConnection | None]:
        """Pooled connections first (each may turn out stale), then None = connect anew."""
        for _ in range(STALE_RETRIES):
            yield self.take_idle(socket_path)
        yield None

    def release(self, socket_path: Path, conn: RunnerConnection) -> None:
        """Back to the pool if its answer ended with keep-alive, else closed."""
        if not conn.reusable or conn.closed:
            conn.close()
            self.warm(socket_path)
            return
        idle = self._idle.setdefault(socket_path, [])
        if len(idle) >= MAX_IDLE_PER_SOCKET:
            conn.close()
            return
        idle.append(conn)

    def warm(self, socket_path: Path) -> None:
        """Open one idle connection ahead of the next request, when none is pooled (after a
        stream, which llama-server ends by closing), so no request waits for a connect."""
        if self._idle.get(socket_path) or socket_path in self._warming:
            return

        async def open_one() -> None:
            with contextlib.suppress(OSError, TimeoutError):
                conn = await self.connect(socket_path)
                conn.reusable = True
                conn.idle_since = time.monotonic()
                self._idle.setdefault(socket_path, []).append(conn)

        task = asyncio.get_running_loop().create_task(open_one())
        self._warming[socket_path] = task
        task.add_done_callback(lambda _: self._warming.pop(socket_path, None))

    async def close(self) -> None:
        for task in list(self._warming.values()):
            task.cancel()
        await asyncio.gather(*self._warming.values(), return_exceptions=True)
        self.hangups.close()
        if self.pumps is not None:
            await self.pumps.close()
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


_heads: ByRestOfHead[Parsed] = ByRestOfHead(
    lambda raw: h if not isinstance(h := _answer_head(raw), str) else None,
    lambda p, n: (p[0], p[1], n, p[3], p[4]),
    limit=64,
)
