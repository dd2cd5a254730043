"""The CLI sends MODEL_RUNNER_API_KEY over MODEL_RUNNER_HOST, never over the Unix socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from modelrunner.cli.client import Client, Endpoint, resolve_endpoint

KEY = "sk-cli-2b4d6f8a0c"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"


@pytest.fixture
def tcp_echo() -> Iterator[tuple[int, list[bytes]]]:
    """A one-connection-at-a-time TCP server recording each request's head; answers `[]`."""
    server = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                heads.append(conn.recv(65536))
                conn.sendall(OK)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], heads
    server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
    server.close()
    thread.join(5)


def test_the_key_comes_from_the_environment_and_stays_out_of_repr() -> None:
    env = {"MODEL_RUNNER_HOST": "http://box:12434", "MODEL_RUNNER_API_KEY": KEY}
    endpoint = resolve_endpoint(None, env)
    assert endpoint.api_key == KEY
    assert KEY not in repr(endpoint)
    assert resolve_endpoint(None, {"MODEL_RUNNER_HOST": "http://box:1"}).api_key is None


def test_over_http_the_key_is_sent_as_bearer(tcp_echo: tuple[int, list[bytes]]) -> None:
    port, heads = tcp_echo
    client = Client(Endpoint(host="127.0.0.1", port=port, api_key=KEY), timeout_s=10)
    assert client.get_json("/models") == []
    assert f"Authorization: Bearer {KEY}\r\n".encode() in heads[0]


def test_without_a_key_no_authorization_header(tcp_echo: tuple[int, list[bytes]]) -> None:
    port, heads = tcp_echo
    assert Client(Endpoint(host="127.0.0.1", port=port), timeout_s=10).get_json("/models") == []
    assert b"authorization" not in heads[0].lower()
