"""Slow clients with real sockets against the real daemon: request headers have a deadline
(server.header_timeout_s) and the connections still sending theirs are bounded
(server.max_pending_header_connections), while ordinary requests keep being answered."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.daemon import DaemonHandle

HALF_A_HEADER = b"GET /models HTTP/1.1\r\nHost: x"  # no end of line, no end of headers
READ_TIMEOUT_S = 60.0  # generous: the machine is shared; the deadlines under test are short


def answer(sock: socket.socket) -> bytes:
    """Everything the daemon sends until it closes the connection."""
    sock.settimeout(READ_TIMEOUT_S)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def outcome(sock: socket.socket) -> str:
    """The 408's message, or "reset": a connection dropped while its bytes sat unread in the
    daemon's kernel buffer is reset by the kernel (RST), which discards the 408 written to it."""
    try:
        return message_of(answer(sock))
    except ConnectionResetError:
        return "reset"


def message_of(raw: bytes) -> str:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), raw[:200]
    error: str = json.loads(body)["error"]
    return error


def get_models(d: DaemonHandle) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=READ_TIMEOUT_S)
    try:
        conn.request("GET", "/models")
        return conn.getresponse().status
    finally:
        conn.close()


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """One whole Content-Length response from *s*: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += s.recv(65536)
    assert len(body) == length  # nothing more was sent after it
    return head, body


@pytest.fixture
def half_open() -> Iterator[Callable[[DaemonHandle, int], list[socket.socket]]]:
    """`open(daemon, n)`: n TCP connections that each sent half a header line; all closed after."""
    made: list[socket.socket] = []

    def open_(d: DaemonHandle, n: int) -> list[socket.socket]:
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=READ_TIMEOUT_S)
            s.sendall(HALF_A_HEADER)
            socks.append(s)
        made.extend(socks)
        return socks

    yield open_
    for s in made:
        s.close()


def test_pending_headers_are_bounded_and_timed_out(
    daemon_factory: Callable[..., DaemonHandle],
    half_open: Callable[[DaemonHandle, int], list[socket.socket]],
) -> None:
    """200 half-header connections against a bound of 50: the oldest are dropped as new ones
    come, the rest at the deadline; each gets a 408 saying which setting; /models still works."""
    d = daemon_factory(server={"header_timeout_s": 2.0, "max_pending_header_connections": 50})
    socks = half_open(d, 200)
    assert get_models(d) == 200  # an ordinary client is answered while 50 slow ones wait
    messages = [outcome(s) for s in socks]
    evicted = [m for m in messages if "server.max_pending_header_connections" in m]
    expired = [m for m in messages if "server.header_timeout_s" in m]
    reset = messages.count("reset")
    assert len(evicted) + len(expired) + reset == 200
    assert evicted  # every connection past the 50th pushed out an older one
    assert len(evicted) + reset >= 150
    assert expired  # the youngest 50 (or 49) ran into the deadline
    assert "within 2s" in expired[0]
    assert get_models(d) == 200


def test_a_trickling_header_does_not_extend_its_deadline(
    daemon_factory: Callable[..., DaemonHandle],
) -> None:
    """Bytes keep coming, a header line at a time, but the head never ends: 408 at the deadline."""
    d = daemon_factory(server={"header_timeout_s": 1.0})
    with socket.create_connection(("127.0.0.1", d.port), timeout=READ_TIMEOUT_S) as s:
        s.sendall(b"GET /models HTTP/1.1\r\nHost: localhost\r\n")
        s.settimeout(0.2)
        closed = b""
        for i in range(int(READ_TIMEOUT_S / 0.2)):
            try:
                s.sendall(f"X-Slow-{i}: y\r\n".encode())
                closed = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if closed:
                break
        assert "server.header_timeout_s" in message_of(closed + answer(s))


def test_keep_alive_next_request_gets_the_deadline_too(
    daemon_factory: Callable[..., DaemonHandle],
) -> None:
    """A whole request is answered; half of the next one on the same connection is dropped."""
    d = daemon_factory(server={"header_timeout_s": 1.0})
    with socket.create_connection(("127.0.0.1", d.port), timeout=READ_TIMEOUT_S) as s:
        s.sendall(b"GET /models HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 ")
        s.sendall(HALF_A_HEADER)
        assert "server.header_timeout_s" in message_of(answer(s))


def test_unix_socket_is_guarded_too(daemon_factory: Callable[..., DaemonHandle]) -> None:
    """The bound is per daemon: a half header on the socket is dropped at the deadline as well."""
    d = daemon_factory(server={"header_timeout_s": 1.0})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(d.socket_path))
        s.sendall(HALF_A_HEADER)
        assert "server.header_timeout_s" in message_of(answer(s))


def test_a_body_arriving_after_the_answer_is_not_a_new_head(
    daemon_factory: Callable[..., DaemonHandle],
) -> None:
    """A 404 answered before its POST body arrived: the late body, then a pause longer than the
    header deadline, then a second request on the same connection, which is answered (not 408)."""
    d = daemon_factory(server={"header_timeout_s": 0.5})
    with socket.create_connection(("127.0.0.1", d.port), timeout=READ_TIMEOUT_S) as s:
        s.sendall(b"POST /no/such/route HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20\r\n\r\n")
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 404 "), head
        s.sendall(b"x" * 20)
        time.sleep(1.5)  # the client's own pause, past the 0.5 s header deadline
        s.sendall(b"GET /models HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 "), head
