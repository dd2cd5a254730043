"""DNS rebinding: a page whose name is rebound to 127.0.0.1 sends its own name in ``Host`` (and,
for a GET, no ``Origin``).  Over loopback the real daemon answers such a request 403 in its
route family's error shape, on both lanes, on the TCP port and on ``server.ollama_port``; the
loopback names, ``server.allowed_hosts`` and the Unix socket are served; the dashboard's own
origin passes CORS preflights without ``server.origins``."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonHandle, free_port

pytestmark = pytest.mark.llama

MODEL = "test/tiny"
EVIL = "rebind.attacker.example"
ALLOWED = "models.team.test"
SECRET = "a-prompt-no-page-may-read"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "max_tokens": 1}

# (method, path, body, the family whose error shape a refusal takes)
ROUTES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/engines/requests", None, "docker"),
    ("GET", "/models", None, "docker"),
    ("GET", "/metrics", None, "docker"),
    ("GET", "/engines/ps", None, "docker"),
    ("GET", "/engines/v1/models", None, "openai"),
    ("GET", "/api/tags", None, "ollama"),
    ("POST", "/engines/v1/chat/completions", CHAT, "openai"),
    ("POST", "/v1/chat/completions", CHAT, "openai"),
    ("POST", "/api/chat", {**CHAT, "stream": False, "options": {"num_predict": 1}}, "ollama"),
    ("POST", "/v1/messages", {**CHAT, "max_tokens": 1}, "anthropic"),
]


def _start(llama_server_bin: Path, tiny_gguf: Path, **server: Any) -> DaemonHandle:
    handle = DaemonHandle({"server": server}, llama_server_bin)
    handle.add_model(MODEL, tiny_gguf)
    return handle


@pytest.fixture(scope="module")
def lanes(llama_server_bin: Path, tiny_gguf: Path) -> Iterator[dict[str, DaemonHandle]]:
    """The fast lane's daemon and aiohttp's, each with an Ollama port and an allowed host."""
    started: dict[str, DaemonHandle] = {}
    try:
        for lane, fast in (("fast lane", True), ("aiohttp", False)):
            started[lane] = _start(
                llama_server_bin,
                tiny_gguf,
                fast_lane=fast,
                ollama_port=free_port(),
                allowed_hosts=[ALLOWED],
            )
        yield started
    finally:
        for handle in started.values():
            handle.close()


@pytest.fixture(autouse=True)
def unload_after(lanes: dict[str, DaemonHandle]) -> Iterator[None]:
    yield
    for handle in lanes.values():
        call(handle, "POST", "/engines/unload", {"all": True}, unix=True)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


def call(
    handle: DaemonHandle,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    unix: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly this ``Host`` (http.client sends the one it is given)."""
    conn: http.client.HTTPConnection = (
        _Unix(str(handle.socket_path))
        if unix
        else http.client.HTTPConnection("127.0.0.1", port or handle.port, timeout=30)
    )
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or f"localhost:{port or handle.port}")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        data = json.dumps(body).encode() if body is not None else b""
        if body is not None:
            conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def assert_shape(family: str, body: bytes) -> str:
    """The refusal in *family*'s error shape; its message."""
    error = json.loads(body)
    if family == "docker" or family == "ollama":
        assert isinstance(error["error"], str), error
        return str(error["error"])
    if family == "anthropic":
        assert error["type"] == "error", error
        assert error["error"]["type"] == "permission_error", error
        return str(error["error"]["message"])
    assert isinstance(error["error"]["message"], str), error
    assert error["error"]["code"] == "forbidden_host", error
    return str(error["error"]["message"])


@pytest.mark.parametrize("listener", ["port", "ollama_port"])
@pytest.mark.parametrize(("method", "path", "body", "family"), ROUTES)
def test_a_rebound_host_is_refused_in_the_routes_shape(
    lanes: dict[str, DaemonHandle],
    listener: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    family: str,
) -> None:
    """A request naming the attacker's host gets 403, on both lanes and both TCP listeners."""
    for lane, handle in lanes.items():
        port = handle.port if listener == "port" else handle.sections["server"]["ollama_port"]
        status, _, answer = call(handle, method, path, body, host=f"{EVIL}:{port}", port=port)
        assert status == 403, (lane, listener, path, answer[:300])
        message = assert_shape(family, answer)
        assert "server.allowed_hosts" in message, message
        assert SECRET.encode() not in answer  # nothing of any prompt


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST", ALLOWED])
@pytest.mark.parametrize(("method", "path", "body", "family"), ROUTES)
def test_loopback_names_and_allowed_hosts_are_served(
    lanes: dict[str, DaemonHandle],
    host: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    family: str,
) -> None:
    """With or without the port, the loopback names and an allowed host are served."""
    del family
    for lane, handle in lanes.items():
        for value in (host, f"{host}:{handle.port}"):
            status, _, answer = call(handle, method, path, body, host=value)
            assert status == 200, (lane, value, path, answer[:300])


def test_the_unix_socket_serves_any_host(lanes: dict[str, DaemonHandle]) -> None:
    """No page can reach the socket; Docker's clients send Hosts of their own through it."""
    for lane, handle in lanes.items():
        for method, path, body, _ in ROUTES:
            status, _, answer = call(handle, method, path, body, host=EVIL, unix=True)
            assert status == 200, (lane, path, answer[:300])


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_the_dashboard_and_its_own_preflights(lanes: dict[str, DaemonHandle], host: str) -> None:
    """``http://localhost:PORT/ui/`` and ``http://127.0.0.1:PORT/ui/`` load; a preflight from
    that origin is allowed without ``server.origins``; another origin's still is not."""
    for lane, handle in lanes.items():
        here = f"{host}:{handle.port}"
        status, _, page = call(handle, "GET", "/ui/", host=here)
        assert status == 200, (lane, page[:200])
        assert b"<html" in page.lower()
        preflight = {
            "Origin": f"http://{here}",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        chat = "/engines/v1/chat/completions"
        status, headers, _ = call(handle, "OPTIONS", chat, host=here, headers=preflight)
        assert status == 204, lane
        assert headers["access-control-allow-origin"] == f"http://{here}"
        assert "content-type" in headers["access-control-allow-headers"]
        status, headers, _ = call(
            handle, "POST", chat, CHAT, host=here, headers={"Origin": f"http://{here}"}
        )
        assert status == 200, lane
        elsewhere = {**preflight, "Origin": "http://localhost:3000"}
        status, headers, _ = call(handle, "OPTIONS", chat, host=here, headers=elsewhere)
        assert status == 403, lane
        assert "access-control-allow-origin" not in headers
