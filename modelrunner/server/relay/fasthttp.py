"""
The fast lane's HTTP/1.1, sans I/O: which request heads it may serve, and the answer heads.

One grammar for both lanes: a head is parsed by llhttp (``httptools``, the parser of Node.js
and uvicorn, strict by default), the same parser aiohttp's own is built on.  The fast lane then
serves only the plainest of what it accepts, the requests API clients send to the inference
routes: ``POST`` of a known path without a query, HTTP/1.1, ASCII only, one ``Host`` and one
``Content-Length``, no header named twice, well inside aiohttp's limits (line length, count),
and none of ``Transfer-Encoding``, ``Expect``, ``Upgrade``, ``Origin`` or ``Content-Encoding``.
Anything else, malformed or merely unusual, is left to aiohttp, whose parser and middleware
answer it as they would with the fast lane off: this module never produces an answer of its
own, so a malformed request gets the same answer on both lanes, and one that could smuggle
another past a proxy never takes this path.  Only ``Content-Type`` and ``Accept`` go on to the
runner (llama-server reads no other, and its own limits, 100 headers of 8 KiB, must never be
what answers a client).  Pure: no sockets, no loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import httptools
from aiohttp import http as aiohttp_http

T = TypeVar("T")
MAX_HEAD = 16 * 1024  # longer heads go to aiohttp (its limit answers them)
# Well inside aiohttp's parser limits (8190 bytes a line, 128 headers): a head near them is
# aiohttp's to judge, so the fast lane never serves one that aiohttp would refuse.
MAX_LINE = 4096
MAX_HEADERS = 64
MAX_LENGTH_DIGITS = 15  # a Content-Length longer than this is aiohttp's (it answers 400)
# Headers that send a request to aiohttp: framing it alone handles, and CORS (the middleware).
_REFUSED = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"origin", b"content-encoding"))
# Request headers the runner gets (llama-server reads no other: the rest are the daemon's).
RUNNER_HEADERS = frozenset((b"content-type", b"accept"))
# Answer headers of the runner's that are this hop's (or this daemon's) to set.
RESPONSE_SKIP = frozenset(
    (
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "access-control-allow-origin",
        "server",
        "date",
    )
)
SERVER = aiohttp_http.SERVER_SOFTWARE  # the same Server header as aiohttp's answers


class Headers(Mapping[str, str]):
    """A request's headers, looked up case-insensitively; decoded only when read."""

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[bytes, bytes]) -> None:
        self._raw = raw  # lower-cased name -> value (each name once: parse_head's rule)

    def __getitem__(self, name: str) -> str:
        return self._raw[name.lower().encode("latin-1")].decode("latin-1")

    def get(self, name: str, default: Any = None) -> Any:
        """Without Mapping.get's KeyError: most headers looked up are absent."""
        value = self._raw.get(name.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@dataclass(slots=True)
class Head:
    """A request head the fast lane may serve."""

    path: str
    length: int
    close: bool  # the client sent ``Connection: close``
    headers: Headers
    forward: bytes  # the header lines that go on to the runner, each ending in CRLF
    method: str = "POST"


class ByRestOfHead(Generic[T]):
    """Heads parsed once, then looked up by their bytes without the ``Content-Length`` value:
    a client sends the same head again and again but for its length, and so does
    llama-server (the same bytes, so the same parse; a streamed answer's head, which has no
    length, by all its bytes).  Bounded; a full cache starts over."""

    _MARK = b"\r\nContent-Length: "

    def __init__(
        self,
        parse: Callable[[bytes], T | None],
        with_length: Callable[[T, int], T],
        limit: int = 256,
    ) -> None:
        self._parse = parse
        self._with_length = with_length
        self._limit = limit
        self._known: dict[bytes, T] = {}
        self._whole: dict[bytes, T] = {}  # heads without a length, by all their bytes

    def __call__(self, raw: bytes) -> T | None:
        at = raw.find(self._MARK)
        if at < 0:
            return self._unframed(raw)
        end = raw.find(b"\r\n", at + 2)
        end = len(raw) if end < 0 else end
        digits = raw[at + len(self._MARK) : end]
        key = raw[:at] + raw[end:]
        known = self._known.get(key)
        if known is not None and digits.isdigit() and len(digits) <= MAX_LENGTH_DIGITS:
            return self._with_length(known, int(digits))
        return self._remember(self._known, key, raw)

    def _unframed(self, raw: bytes) -> T | None:
        """A head without ``Content-Length`` (a streamed answer's): known by all its bytes."""
        known = self._whole.get(raw)
        return known if known is not None else self._remember(self._whole, raw, raw)

    def _remember(self, known: dict[bytes, T], key: bytes, raw: bytes) -> T | None:
        parsed = self._parse(raw)
        if parsed is not None:
            if len(known) >= self._limit:
                known.clear()
            known[key] = parsed
        return parsed


def parse_head(raw: bytes) -> Head | None:
    """*raw* (without its final blank line) as a Head, or None: aiohttp's to answer."""
    return _heads(raw)


def incomplete_is_aiohttps(buf: bytes) -> bool:
    """Whether a head still without its CRLF CRLF is aiohttp's already: too long to be one the
    fast lane serves, or with a bare LF (aiohttp refuses it at once; waiting for a CRLF CRLF
    that never comes would end in the header deadline's 408 instead)."""
    return len(buf) > MAX_HEAD or buf.count(b"\n") != buf.count(b"\r\n")


class _Collect:
    """httptools' callbacks for one head: its target and header fields, as sent."""

    __slots__ = ("done", "fields", "url")

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def parse_fields(raw: bytes) -> tuple[bytes, bytes, str, list[tuple[bytes, bytes]]] | None:
    """*raw* (a head without its final blank line) through llhttp: method, target, version and
    header fields, or None if llhttp refuses it (or it would upgrade the connection)."""
    fields = _Collect()
    parser = httptools.HttpRequestParser(fields)
    try:
        parser.feed_data(raw + b"\r\n\r\n")
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if not fields.done:
        return None
    return parser.get_method(), fields.url, parser.get_http_version(), fields.fields


def _parse_head(raw: bytes) -> Head | None:
    if not raw.startswith(b"POST /") or len(raw) > MAX_HEAD or not raw.isascii():
        return None
    parsed = parse_fields(raw)
    if parsed is None:
        return None
    method, path, version, lines = parsed
    if method != b"POST" or version != "1.1" or len(lines) > MAX_HEADERS:
        return None
    if any(c in path for c in b" ?%#") or len(path) > MAX_LINE:
        return None
    fields: dict[bytes, bytes] = {}
    forward = []
    for name, value in lines:
        lower = name.lower()
        if lower in fields or lower in _REFUSED or len(name) + len(value) > MAX_LINE:
            return None  # a header twice (Host, Authorization…): aiohttp's to judge
        value = value.strip(b" \t")
        fields[lower] = value
        if lower in RUNNER_HEADERS:
            forward.append(b"%s: %s" % (name, value))
    raw_length = fields.get(b"content-length")
    if raw_length is None or b"host" not in fields or len(raw_length) > MAX_LENGTH_DIGITS:
        return None
    if not raw_length.isdigit():
        return None
    tokens = fields.get(b"connection", b"").lower()
    if b"upgrade" in tokens:
        return None
    forward.append(b"")
    return Head(
        path.decode("ascii"),
        int(raw_length),
        b"close" in tokens,
        Headers(fields),
        b"\r\n".join(forward),
    )


def runner_request(upstream_path: str, head: Head | bytes, body: bytes, *, stream: bool) -> bytes:
    """The whole request to send to llama-server, in one buffer; *head*: the client's request
    head, or the header lines to forward (aiohttp's lane).  A stream asks to close:
    llama-server ends a streamed answer by closing even when it announced keep-alive."""
    close = b"Connection: close\r\n" if stream else b""
    return b"".join(
        (
            b"POST %s HTTP/1.1\r\nHost: localhost\r\n" % upstream_path.encode("ascii"),
            head if isinstance(head, bytes) else head.forward,
            b"Content-Length: %d\r\n" % len(body),
            close,
            b"\r\n",
            body,
        )
    )


_date: tuple[int, bytes] = (0, b"")


def date_header() -> bytes:
    """``Date`` for this second (formatted once a second, not once an answer)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date[1]


_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def head_start(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    """An answer's status line and *headers*: the part of its head that repeats."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in headers:
        parts.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    return b"".join(parts)


_SERVER = b"Server: %s\r\n" % SERVER.encode("ascii")


def answer_head(start: bytes, *, length: int | None, close: bool) -> bytes:
    """An answer's head: *start* (``head_start``), then the framing (``Content-Length``
    *length*, or chunked when None), ``Date``, ``Server`` and ``Connection: close`` when
    *close*."""
    framing = (
        b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    )
    closing = b"Connection: close\r\n\r\n" if close else b"\r\n"
    return b"%b%bDate: %b\r\n%b%b" % (start, framing, date_header(), _SERVER, closing)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked answer."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def one_chunk(data: bytes) -> int:
    """Where the payload starts if *data* is exactly one non-empty chunk framed as llama-server
    frames (its size in lower-case hex without leading zeros), else 0: a real model's token,
    read whole, which the relays pass on with the fewest steps."""
    eol = data.find(b"\r\n")
    size = len(data) - eol - 4
    if eol > 0 and size > 0 and data[-2:] == b"\r\n" and data[:eol] == b"%x" % size:
        return eol + 2
    return 0


_heads = ByRestOfHead(_parse_head, lambda h, n: Head(h.path, n, h.close, h.headers, h.forward))
