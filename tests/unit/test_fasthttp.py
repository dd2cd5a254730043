"""The fast lane's HTTP/1.1, sans I/O: which request heads it takes (the rest are aiohttp's),
the runner answer parser fed in every possible split, and the answer heads it writes."""

from __future__ import annotations

import pytest

from modelrunner.server.fastlane import routes
from modelrunner.server.relay import fasthttp, upstream

HEAD = (
    b"POST /engines/v1/chat/completions HTTP/1.1\r\nHost: localhost:12434\r\n"
    b"Accept-Encoding: gzip\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.50.0\r\nAuthorization: Bearer sk-1\r\nContent-Length: 120"
)


def test_a_plain_head_is_taken_with_what_the_runner_needs() -> None:
    head = fasthttp.parse_head(HEAD)
    assert head is not None
    assert (head.path, head.length, head.close) == ("/engines/v1/chat/completions", 120, False)
    assert head.headers.get("user-agent") == "OpenAI/Python 1.50.0"
    assert head.headers.get("X-Preload-Only", "") == ""
    # Only what llama-server reads goes on: the key, this hop's headers and the rest stay here.
    assert head.forward == b"Content-Type: application/json\r\n"
    sent = fasthttp.runner_request("/v1/chat/completions", head, b"{}", stream=True)
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
    assert sent.endswith(b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")


def test_a_known_head_with_another_length_is_looked_up_not_reparsed() -> None:
    first = fasthttp.parse_head(HEAD)
    again = fasthttp.parse_head(HEAD.replace(b"Content-Length: 120", b"Content-Length: 7"))
    assert first is not None
    assert again is not None
    assert (first.length, again.length) == (120, 7)
    assert again.headers is first.headers  # the same parse, reused
    assert fasthttp.parse_head(HEAD.replace(b"Content-Length: 120", b"Content-Length: x")) is None


def test_a_streamed_answers_head_without_a_length_is_parsed_once() -> None:
    """llama-server's SSE head has no Content-Length: known by all its bytes, and never taken
    for a head that had one (whose length would then be wrong)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked"
    first = upstream.answer_head(head)
    assert upstream.answer_head(head) is first
    assert not isinstance(first, str)
    assert (first[2], first[3]) == (None, True)
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
    sized = upstream.answer_head(plain + b"\r\nContent-Length: 9")
    unsized = upstream.answer_head(plain)
    assert not isinstance(sized, str)
    assert not isinstance(unsized, str)
    assert (sized[2], unsized[2]) == (9, None)
    assert upstream.answer_head(plain + b"\r\nContent-Length: 4")[2] == 4  # type: ignore[index]


@pytest.mark.parametrize(
    "change",
    [
        (b"POST /engines", b"GET /engines"),
        (b"HTTP/1.1", b"HTTP/1.0"),
        (b"/completions HTTP", b"/completions?x=1 HTTP"),
        (b"/completions HTTP", b"/completions%20 HTTP"),
        (b"Content-Length: 120", b"Content-Length: 120\r\nContent-Length: 5"),
        (b"Content-Length: 120", b"Transfer-Encoding: chunked"),
        (b"Content-Length: 120", b"Content-Length: -1"),
        (b"Content-Length: 120", b"Content-Length: 120\r\nExpect: 100-continue"),
        (b"Content-Length: 120", b"Content-Length: 120\r\nOrigin: http://evil.example"),
        (b"Connection: keep-alive", b"Connection: Upgrade"),
        (b"User-Agent", b"User Agent"),
        (b"OpenAI/Python", b"Op\x00enAI"),
        (b"OpenAI/Python", "Caf\u00e9".encode()),
        (b"Content-Length: 120", b"X: y"),  # no length: aiohttp decides what the body is
    ],
)
def test_anything_unusual_is_left_to_aiohttp(change: tuple[bytes, bytes]) -> None:
    assert fasthttp.parse_head(HEAD.replace(*change)) is None


def test_connection_close_is_seen() -> None:
    head = fasthttp.parse_head(HEAD.replace(b"keep-alive", b"close"))
    assert head is not None
    assert head.close


def test_routes_cover_every_prefix_and_backend() -> None:
    table = routes()
    assert table["/engines/llama.cpp/v1/chat/completions"].canonical == (
        "/engines/{backend}/v1/chat/completions"
    )
    assert table["/v1/embeddings"].upstream_path == "/v1/embeddings"
    assert table["/engines/rerank"].upstream_path == "/v1/rerank"
    assert "/engines/vllm/v1/chat/completions" not in table  # aiohttp answers the 400


def test_answer_heads_frame_and_close() -> None:
    start = fasthttp.head_start(200, [("Content-Type", "application/json")])
    whole = fasthttp.answer_head(start, length=5, close=False)
    assert whole.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    assert b"Content-Length: 5\r\n" in whole
    assert b"\r\nDate: " in whole
    assert whole.endswith(b"\r\n\r\n")
    assert b"Connection: close" not in whole
    chunked = fasthttp.answer_head(start, length=None, close=True)
    assert b"Transfer-Encoding: chunked\r\n" in chunked
    assert chunked.endswith(b"Connection: close\r\n\r\n")


class Sink:
    def __init__(self) -> None:
        self.status = 0
        self.headers: tuple[tuple[str, str], ...] = ()
        self.chunked = False
        self.body_parts: list[bytes] = []
        self.framed = b""
        self.ended = False
        self.error: BaseException | None = None
        self.tokens = 0  # reads relayed as one whole chunk (RunnerConnection's short path)

    def head(self, status: int, headers: tuple[tuple[str, str], ...], chunked: bool) -> None:
        self.status, self.headers, self.chunked = status, headers, chunked

    def body(self, data: bytes) -> None:
        self.body_parts.append(data)

    def frames(self, data: bytes) -> None:
        self.framed += data

    def token(self, data: bytes, payload: bytes) -> None:
        self.tokens += 1
        self.body(payload)
        self.frames(data)

    def flush(self) -> None:
        pass

    def end(self) -> None:
        self.ended = True

    def lost(self, exc: BaseException) -> None:
        self.error = exc


def unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        out, data = out + data[:size], data[size + 2 :]
    return out


def feed(answer: bytes, step: int) -> Sink:
    conn = upstream.RunnerConnection()
    sink = Sink()
    conn.sink = sink
    conn._state = upstream._HEAD
    for i in range(0, len(answer), step):
        conn.data_received(answer[i : i + step])
    return sink


SSE = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', b"data: [DONE]\n\n"]
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    b"Keep-Alive: timeout=5\r\n\r\n"
    + b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in SSE)
    + b"0\r\n\r\n"
)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 10_000])
def test_a_chunked_answer_parses_the_same_in_any_split(step: int) -> None:
    sink = feed(CHUNKED, step)
    assert sink.ended
    assert sink.error is None
    assert (sink.status, sink.chunked) == (200, True)
    assert b"".join(sink.body_parts) == b"".join(SSE)
    assert unchunk(sink.framed) == b"".join(SSE)  # what the client gets is valid chunking


@pytest.mark.parametrize(
    "framing",
    [
        b"%X\r\n%b\r\n",  # upper-case hex
        b"00%x\r\n%b\r\n",  # leading zeros
        b"%x;name=value\r\n%b\r\n",  # a chunk extension
    ],
)
@pytest.mark.parametrize("step", [1, 3, 10_000])
def test_chunks_framed_unlike_llama_server_parse_the_same(framing: bytes, step: int) -> None:
    """The quick path takes only llama-server's own framing; the general parser the rest."""
    events = [b'data: {"text": "a\r\nb"}\n\n', b"x" * 300, *SSE]  # a CRLF inside a payload
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n" + b"".join(framing % (len(e), e) for e in events) + b"0\r\n\r\n"
    )
    sink = feed(answer, step)
    assert sink.ended
    assert sink.error is None
    assert b"".join(sink.body_parts) == b"".join(events)
    assert unchunk(sink.framed.replace(b";name=value", b"")) == b"".join(events)


@pytest.mark.parametrize("step", [1, 5, 10_000])
def test_a_whole_answer_and_its_length(step: int) -> None:
    body = b'{"usage": {"prompt_tokens": 3}}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
    sink = feed(answer % (len(body), body), step)
    assert sink.ended
    assert not sink.chunked
    assert b"".join(sink.body_parts) == body
    assert all(name.lower() != "content-length" for name, _ in sink.headers)


@pytest.mark.parametrize("size", [b"zz", b"-5", b"+5", b"1_0"])
def test_a_malformed_chunk_size_fails_the_answer(size: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n"
    sink = feed(answer, 10_000)
    assert isinstance(sink.error, upstream.UpstreamClosed)
    assert not sink.ended


def test_no_status_line_fails() -> None:
    sink = feed(b"garbage\r\n\r\n", 10_000)
    assert isinstance(sink.error, upstream.UpstreamClosed)
    assert "no HTTP status line" in str(sink.error)


def test_a_body_that_ends_with_the_connection() -> None:
    conn = upstream.RunnerConnection()
    sink = Sink()
    conn.sink = sink
    conn._state = upstream._HEAD
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
    conn.data_received(b"def")
    conn.connection_lost(None)
    assert sink.ended
    assert sink.error is None
    assert b"".join(sink.body_parts) == b"abcdef"
    assert unchunk(sink.framed) == b"abcdef"


class Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        pass


class Loop:
    def __init__(self) -> None:
        self.holds: list[float] = []

    def call_later(self, delay: float, callback: object) -> None:
        self.holds.append(delay)


def test_a_read_of_one_whole_chunk_takes_the_short_path_and_nothing_else_does() -> None:
    """A real model's token (one chunk per read) goes to ``Sink.token`` as framed; a chunk
    framed otherwise (upper-case hex, leading zeros, an extension), a partial one, the last
    chunk, or several in one read take the general parser, with the same result."""
    conn = upstream.RunnerConnection()
    conn.transport = Transport()  # type: ignore[assignment]
    sink = Sink()
    conn.send(b"POST / HTTP/1.1\r\n\r\n", sink)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    event = SSE[0]
    size = b"%x" % len(event)
    conn.data_received(size + b"\r\n" + event + b"\r\n")
    assert sink.tokens == 1
    for framed in (
        size.upper() + b"\r\n" + event + b"\r\n",
        b"0" + size + b"\r\n" + event + b"\r\n",
        size + b";x=1\r\n" + event + b"\r\n",
        (size + b"\r\n" + event + b"\r\n") * 2,
    ):
        conn.data_received(framed)
    whole = size + b"\r\n" + event + b"\r\n"
    conn.data_received(whole[:7])  # a chunk cut across reads
    conn.data_received(whole[7:])
    assert sink.tokens == 1 + (1 if size.upper() == size else 0)
    conn.data_received(b"0\r\n\r\n")
    assert sink.ended
    assert sink.error is None
    assert b"".join(sink.body_parts) == event * 7


def held_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[float], upstream.RunnerConnection, Transport, Loop]:
    """A runner connection sent a request, holding at 2 ms, on a clock the test moves."""
    now = [1000.0]
    monkeypatch.setattr(upstream.time, "monotonic", lambda: now[0])
    conn = upstream.RunnerConnection()
    transport, loop = Transport(), Loop()
    conn.transport, conn._loop = transport, loop  # type: ignore[assignment]
    conn.hold_s = 0.002
    conn.send(b"POST / HTTP/1.1\r\n\r\n", Sink())
    return now, conn, transport, loop


def test_a_runner_that_hung_up_is_never_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hang-up can be seen in the same turn of the loop as the read before it, while the
    connection is not held: the next read must not start a hold then, or the answer's end
    waits for the hold's timer (the last batch 15-40 ms late on a fast stream)."""
    now, conn, transport, loop = held_stream(monkeypatch)
    event = b"%x\r\n%b\r\n" % (len(SSE[0]), SSE[0])
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + event)
    conn._hung_up()  # not held: nothing to release, but noted
    now[0] += 0.0005
    conn.data_received(event)  # quick, yet the runner is gone: read on
    assert transport.reading
    assert loop.holds == []


def test_a_quick_stream_is_held_longer_and_longer_up_to_eight_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first token goes at once; a stream that stays quick is held for 2, 8, 16, 16 ms;
    one that slows down starts over at 2 ms."""
    now, conn, transport, loop = held_stream(monkeypatch)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    event = b"%x\r\n%b\r\n" % (len(SSE[0]), SSE[0])
    conn.data_received(head + event)
    assert loop.holds == []  # the first token is never held
    for _ in range(6):
        now[0] += 0.0005
        conn.data_received(event)
        assert not transport.reading
        now[0] += loop.holds[-1]
        conn._release()
        assert transport.reading
    assert loop.holds == [0.002, 0.008, 0.016, 0.016, 0.016, 0.016]
    now[0] += 0.050  # a slow token: not held
    conn.data_received(event)
    assert transport.reading
    now[0] += 0.0005
    conn.data_received(event)  # quick again: from the first hold
    assert loop.holds[-1] == 0.002
