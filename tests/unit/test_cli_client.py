"""The CLI's HTTP client against canned raw responses on a real Unix socket (no daemon)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrunner.cli.client import Client, DaemonError, DaemonNotRunning, Endpoint
from modelrunner.errors import ModelRunnerError


@pytest.fixture
def canned() -> Iterator[tuple[Client, list[bytes]]]:
    """A client whose daemon answers each request with the next raw bytes queued, then closes."""
    root = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    path = root / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    answers: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if answers:
                    conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield Client(Endpoint(socket_path=path)), answers
    server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
    server.close()
    thread.join(5)
    shutil.rmtree(root, ignore_errors=True)


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def test_a_complete_chunked_stream_is_read_line_by_line(canned) -> None:
    client, answers = canned
    answers.append(
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\na\nb\n\r\n2\r\nc\n\r\n0\r\n\r\n"
    )
    assert list(client.request("GET", "/x", stream=True).lines()) == ["a", "b", "c"]


def test_a_chunked_stream_cut_short_is_an_error(canned) -> None:
    """What a daemon killed mid-answer looks like: no last chunk."""
    client, answers = canned
    answers.append(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\na\nb\n\r\n")
    lines = client.request("GET", "/x", stream=True).lines()
    assert next(lines) == "a"
    with pytest.raises(ModelRunnerError, match="closed the connection before the answer ended"):
        list(lines)


def test_a_content_length_body_cut_short_is_an_error(canned) -> None:
    client, answers = canned
    answers.append(OK_HEAD + b"Content-Length: 100\r\n\r\n[1, 2")
    with pytest.raises(ModelRunnerError, match="before the answer ended"):
        client.get_json("/x")


def test_error_statuses_carry_the_daemons_message(canned) -> None:
    client, answers = canned
    body = b'{"error": "model \'x\' is not in the local store"}'
    answers.append(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with pytest.raises(DaemonError) as exc:
        client.get_json("/models/x")
    assert exc.value.http_status == 404
    assert exc.value.message == "model 'x' is not in the local store"


def test_nothing_listening_is_daemon_not_running(tmp_path) -> None:
    client = Client(Endpoint(socket_path=tmp_path / "none.sock"))
    with pytest.raises(DaemonNotRunning, match="modelrunner serve"):
        client.get_json("/")
