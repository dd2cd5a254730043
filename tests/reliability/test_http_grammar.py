"""One HTTP grammar on both lanes: a corpus of malformed and ambiguous requests, sent as raw
bytes to a real daemon with the fast lane on and to one with it off, gets the same status from
both (in JSON), and no request ever smuggles a second one past the daemon.

Both daemons ask for an API key on TCP, so that two ``Authorization`` headers (a wrong key, then
the right one) show which one each lane reads.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon import DaemonHandle

pytestmark = pytest.mark.llama

MODEL = "test/tiny"
KEY = "sk-grammar-good"
CHAT = "/engines/v1/chat/completions"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
).encode()
SECOND = (
    b"POST /engines/v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
    b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


def request(
    *headers: bytes, body: bytes = BODY, line: bytes = b"POST " + CHAT.encode() + b" HTTP/1.1"
) -> bytes:
    """A request of exactly these bytes: *line*, then *headers* each ending in CRLF."""
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


HOST = b"Host: localhost"
AUTH = b"Authorization: Bearer " + KEY.encode()
TYPE = b"Content-Type: application/json"
LENGTH = b"Content-Length: %d" % len(BODY)
PLAIN = (HOST, AUTH, TYPE, LENGTH)
CLOSE = b"Connection: close"

# name -> (the bytes, the status both lanes must give, or None: whatever aiohttp gives)
CORPUS: dict[str, tuple[bytes, int | None]] = {
    "plain": (request(*PLAIN, CLOSE), 200),
    "content-length of 5000 digits": (
        request(HOST, AUTH, TYPE, b"Content-Length: " + b"9" * 5000, CLOSE),
        400,
    ),
    "bare LF line endings": (request(*PLAIN, CLOSE).replace(b"\r\n", b"\n"), 400),
    "one bare LF": (request(HOST + b"\n" + AUTH, TYPE, LENGTH, CLOSE), 400),
    "no Host": (request(AUTH, TYPE, LENGTH, CLOSE), 400),
    "two Host headers": (request(HOST, HOST, AUTH, TYPE, LENGTH, CLOSE), 400),
    "two Authorization headers, wrong then good": (
        request(HOST, b"Authorization: Bearer sk-wrong", AUTH, TYPE, LENGTH, CLOSE),
        401,
    ),
    "gzip that is not gzip": (
        request(*PLAIN, b"Content-Encoding: gzip", CLOSE),
        400,
    ),
    "a header line over 8 KiB": (request(*PLAIN, b"X-Big: " + b"a" * 9000, CLOSE), 400),
    "101 headers (over llama-server's 100)": (
        request(*PLAIN, *(b"X-H%d: v" % i for i in range(101)), CLOSE),
        200,
    ),
    "130 headers (over aiohttp's 128)": (
        request(*PLAIN, *(b"X-H%d: v" % i for i in range(130)), CLOSE),
        400,
    ),
    "Content-Length and Transfer-Encoding": (
        request(
            HOST, AUTH, TYPE, LENGTH, b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SECOND
        ),
        400,
    ),
    "Transfer-Encoding that is not chunked": (
        request(HOST, AUTH, TYPE, b"Transfer-Encoding: xchunked", LENGTH, body=BODY + SECOND),
        None,
    ),
    "two Content-Lengths": (request(HOST, AUTH, TYPE, LENGTH, LENGTH, CLOSE), 400),
    "two different Content-Lengths": (
        request(HOST, AUTH, TYPE, LENGTH, b"Content-Length: 2", body=BODY + SECOND),
        400,
    ),
    "a signed Content-Length": (
        request(HOST, AUTH, TYPE, b"Content-Length: +%d" % len(BODY), CLOSE),
        400,
    ),
    "obs-fold": (request(*PLAIN, b"X-A: b", b" folded", CLOSE), 400),
    "NUL in a value": (request(*PLAIN, b"X-A: b\x00c", CLOSE), 400),
    "CR in a value": (request(*PLAIN, b"X-A: b\rc", CLOSE), 400),
    "space before the colon": (request(HOST, AUTH, TYPE + b" ", b"Content-Length : 5", CLOSE), 400),
    "a name that is not a token": (request(*PLAIN, b"X(A): b", CLOSE), 400),
    "absolute-form target": (
        request(*PLAIN, CLOSE, line=b"POST http://localhost" + CHAT.encode() + b" HTTP/1.1"),
        None,
    ),
    "HTTP/1.0": (request(*PLAIN, line=b"POST " + CHAT.encode() + b" HTTP/1.0"), 200),
    "HTTP/1.0 without Host": (
        request(AUTH, TYPE, LENGTH, line=b"POST " + CHAT.encode() + b" HTTP/1.0"),
        200,
    ),
    "a lower-case method": (
        request(*PLAIN, CLOSE, line=b"post " + CHAT.encode() + b" HTTP/1.1"),
        None,
    ),
    "obs-text in a value": (request(*PLAIN, b"X-A: caf\xe9", CLOSE), 200),
    "a pipelined second request after a whole one": (request(*PLAIN, body=BODY + SECOND), 200),
}
SMUGGLING = {
    "Content-Length and Transfer-Encoding",
    "Transfer-Encoding that is not chunked",
    "two different Content-Lengths",
}


def _daemon(llama_server_bin: Path, tiny_gguf: Path, fast_lane: bool) -> DaemonHandle:
    handle = DaemonHandle(
        {"server": {"fast_lane": fast_lane, "api_keys": [KEY], "body_timeout_s": 2.0}},
        llama_server_bin,
    )
    handle.add_model(MODEL, tiny_gguf)
    return handle


@pytest.fixture(scope="module")
def lanes(llama_server_bin: Path, tiny_gguf: Path) -> Iterator[dict[str, DaemonHandle]]:
    """A daemon with the fast lane and one without, the same model and key in each."""
    fast = _daemon(llama_server_bin, tiny_gguf, fast_lane=True)
    try:
        slow = _daemon(llama_server_bin, tiny_gguf, fast_lane=False)
    except BaseException:
        fast.close()
        raise
    try:
        yield {"fast lane": fast, "aiohttp": slow}
    finally:
        slow.close()
        fast.close()


@pytest.fixture(autouse=True)
def unload_after(lanes: dict[str, DaemonHandle]) -> Iterator[None]:
    """The module's daemons live on; their runners must not outlive each test."""
    yield
    for handle in lanes.values():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(handle.socket_path))
            body = b'{"all": true}'
            s.sendall(
                b"POST /engines/unload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            while s.recv(65536):
                pass


STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) (\d{3}) ")


def exchange(handle: DaemonHandle, raw: bytes, *, linger_s: float) -> bytes:
    """Send *raw*; everything the daemon sends until it closes, or until nothing more has
    come for *linger_s* after a first answer (a second one, had it run, would have come)."""
    with socket.create_connection(("127.0.0.1", handle.port), timeout=30) as s:
        s.sendall(raw)
        got = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s.settimeout(linger_s if got else 30)
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not data:
                break
            got += data
        return got


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """Each answer's status and its body's first bytes, in order."""
    found = list(STATUS_LINE.finditer(raw))
    out = []
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(raw)
        part = raw[m.start() : end]
        out.append((int(m.group(2)), part.partition(b"\r\n\r\n")[2]))
    return out


@pytest.mark.parametrize("name", list(CORPUS))
def test_both_lanes_answer_alike(lanes: dict[str, DaemonHandle], name: str) -> None:
    """The same status from the fast lane and from aiohttp; an error in JSON; one answer per
    request sent (none smuggled in the body)."""
    raw, expected = CORPUS[name]
    seen = {}
    for lane, handle in lanes.items():
        got = answers(exchange(handle, raw, linger_s=1.5 if name in SMUGGLING else 0.5))
        assert got, f"{lane}: no answer to {name!r}"
        statuses = [status for status, _ in got]
        expected_count = 2 if name.startswith("a pipelined") else 1
        assert len(statuses) == expected_count, f"{lane}: {name!r} answered {statuses}"
        status, body = got[0]
        if status >= 400:
            text = body.decode("latin-1")
            error, _ = json.JSONDecoder().raw_decode(text[text.find("{") :])
            assert "error" in error, (lane, body[:300])
        seen[lane] = statuses
    assert seen["fast lane"] == seen["aiohttp"], f"{name!r}: {seen}"
    if expected is not None:
        assert seen["aiohttp"][0] == expected, f"{name!r}: {seen}"
