"""The fast lane on the real daemon, driven with raw sockets so that framing, pipelining and
hand-over are exact: inference requests answered off the socket, everything else (and anything
unusual) handed to aiohttp on the same connection, with the same answers as before."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonHandle

pytestmark = pytest.mark.llama

MODEL = "test/tiny"
CHAT = "/engines/v1/chat/completions"


def chat_body(**extra: Any) -> bytes:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return json.dumps({**payload, **extra}).encode()


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Content-Type: application/json"]
    lines += [*headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def connect(daemon: DaemonHandle, unix: bool = False) -> socket.socket:
    if unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(daemon.socket_path))
    else:
        s = socket.create_connection(("127.0.0.1", daemon.port))
    s.settimeout(30)
    return s


class Reader:
    """HTTP/1.1 answers off one socket, one after the other (Content-Length or chunked)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        part, _, self.buf = self.buf.partition(marker)
        return part

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        part, self.buf = self.buf[:n], self.buf[n:]
        return part

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return self.answer()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._until(b"\r\n"), 16):
                body += self._take(size)
                self._take(2)
            self._until(b"\r\n")
            return status, headers, body
        return status, headers, self._take(int(headers.get("content-length", "0")))

    def closed(self) -> bool:
        try:
            self._fill()
        except (ConnectionError, OSError):
            return True
        return False


@pytest.fixture
def served(daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path) -> DaemonHandle:
    d = daemon_factory(server={"body_timeout_s": 1.0})
    d.add_model(MODEL, tiny_gguf)
    return d


def test_pipelined_requests_then_a_management_route_on_one_connection(
    served: DaemonHandle,
) -> None:
    """Two chats in one write answer in order; a GET after them is aiohttp's, same socket."""
    s = connect(served)
    s.sendall(post(CHAT, chat_body()) + post("/v1/chat/completions", chat_body()))
    r = Reader(s)
    for _ in range(2):
        status, headers, body = r.answer()
        assert status == 200, body
        assert json.loads(body)["object"] == "chat.completion"
        assert "date" in headers
        assert "server" in headers
    s.sendall(b"GET /models HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, body = r.answer()
    assert status == 200
    assert any(MODEL in str(m.get("tags")) for m in json.loads(body))
    s.close()


def test_a_head_and_body_in_pieces(served: DaemonHandle) -> None:
    s = connect(served, unix=True)
    request = post(CHAT, chat_body())
    for i in range(0, len(request), 17):
        s.sendall(request[i : i + 17])
        time.sleep(0.005)
    status, _, body = Reader(s).answer()
    assert status == 200, body


def test_a_body_that_never_finishes_is_a_408_in_openai_shape(served: DaemonHandle) -> None:
    s = connect(served)
    s.sendall(post(CHAT, chat_body())[:-10])
    r = Reader(s)
    status, headers, body = r.answer()
    assert status == 408
    assert "body_timeout_s" in json.loads(body)["error"]["message"]
    assert headers.get("connection") == "close"
    assert r.closed()


def test_bad_input_gets_the_routes_own_errors(served: DaemonHandle) -> None:
    s = connect(served)
    r = Reader(s)
    s.sendall(post(CHAT, b"{not json"))
    status, _, body = r.answer()
    assert status == 400
    assert "not valid JSON" in json.loads(body)["error"]["message"]
    s.sendall(post(CHAT, json.dumps({"model": "nobody/here", "messages": []}).encode()))
    status, _, body = r.answer()
    assert status == 404
    assert json.loads(body)["error"]["code"] == "model_not_found"
    s.close()


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (("Expect: 100-continue",), 200),  # aiohttp's 100, then the answer
        (("Content-Length: 3",), 400),  # two lengths: refused, never relayed
    ],
)
def test_unusual_framing_is_aiohttps(
    served: DaemonHandle, extra: tuple[str, ...], status: int
) -> None:
    s = connect(served)
    s.sendall(post(CHAT, chat_body(), *extra))
    got, _, body = Reader(s).answer()
    assert got == status, body
    json.loads(body)  # JSON either way


def test_a_chunked_request_body_is_read_by_aiohttp(served: DaemonHandle) -> None:
    body = chat_body()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    s = connect(served)
    s.sendall(head.encode() + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))
    status, _, answer = Reader(s).answer()
    assert status == 200, answer


def test_a_stream_is_relayed_with_sse_headers(served: DaemonHandle) -> None:
    s = connect(served)
    s.sendall(post(CHAT, chat_body(stream=True, max_tokens=16, ignore_eos=True)))
    status, headers, body = Reader(s).answer()
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no"
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    assert sum(b'"content"' in e for e in events) >= 16  # (and the first: the role)


def test_a_slow_reader_gets_the_whole_stream(served: DaemonHandle) -> None:
    """Back-pressure: the runner is paused, not the answer cut or buffered without bound."""
    s = connect(served)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(post(CHAT, chat_body(stream=True, max_tokens=300, ignore_eos=True)))
    time.sleep(1.5)
    status, _, body = Reader(s).answer()
    assert status == 200
    assert body.rstrip().endswith(b"data: [DONE]")


def test_keys_on_tcp_and_none_on_the_socket(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path
) -> None:
    d = daemon_factory(server={"api_keys": ["k-123"]})
    d.add_model(MODEL, tiny_gguf)
    r = Reader(s := connect(d))
    s.sendall(post(CHAT, chat_body()))
    status, _, body = r.answer()
    assert status == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"
    s.close()
    r = Reader(s := connect(d))
    s.sendall(post(CHAT, chat_body(), "Authorization: Bearer k-123"))
    assert r.answer()[0] == 200
    s.sendall(post(CHAT, chat_body(), "x-api-key: wrong"))
    assert r.answer()[0] == 401
    s.close()
    r = Reader(s := connect(d, unix=True))
    s.sendall(post(CHAT, chat_body()))
    assert r.answer()[0] == 200


def test_the_metrics_count_fast_lane_requests_and_tokens(served: DaemonHandle) -> None:
    r = Reader(s := connect(served))
    for _ in range(3):
        s.sendall(post(CHAT, chat_body()))
        assert r.answer()[0] == 200
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    _, _, text = r.answer()
    metrics = text.decode()
    route = 'route="/engines/v1/chat/completions",status="200"'
    assert any(route in line and line.endswith(" 3") for line in metrics.splitlines()), metrics
    assert "completion_tokens" in metrics or "tokens" in metrics


def test_fast_lane_off_serves_the_same(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path
) -> None:
    d = daemon_factory(server={"fast_lane": False})
    d.add_model(MODEL, tiny_gguf)
    r = Reader(s := connect(d))
    s.sendall(post(CHAT, chat_body()) + post(CHAT, chat_body(stream=True)))
    assert r.answer()[0] == 200
    status, headers, _ = r.answer()
    assert status == 200
    assert headers["x-accel-buffering"] == "no"
