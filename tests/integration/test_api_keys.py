"""API keys on TCP (issue 14), driven as users do: the real `openai` package over TCP and over the
Unix socket, real curl, the CLI with MODEL_RUNNER_HOST, and `modelrunner serve` refusing a
non-loopback host without keys.  Every key used is grepped for in the daemon's logs at the end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.fixtures.daemon import DaemonHandle, free_port
from tests.integration.test_daemon import MODEL, curl
from tests.integration.test_engine import modelrunner

pytestmark = pytest.mark.llama

KEY = "mr-test-key-7f3a9c1e5b"
FILE_KEY = "mr-file-key-0d4e8b2a6c"
WRONG = "mr-wrong-key-9e1c3a5f7d"
ORIGIN = "http://localhost:5173"
NO_AUTH = openai.Omit()  # the openai package always sends a Bearer header unless told not to


@pytest.fixture
def keyed(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path, tmp_path: Path
) -> Iterator[DaemonHandle]:
    """A daemon with one key in the config and one in a keys file, the tiny model, an origin."""
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# rotated monthly\n\n{FILE_KEY}\n")
    d = daemon_factory(
        server={
            "api_keys": [KEY],
            "api_keys_file": str(keys_file),
            "origins": [ORIGIN],
            "ollama_port": free_port(),  # a second TCP listener: it asks for the key too
        }
    )
    d.add_model(MODEL, tiny_gguf)
    yield d
    assert_no_key_leaked(d)


def tcp_client(d: DaemonHandle, **kw: Any) -> openai.OpenAI:
    kw.setdefault("api_key", "unused")
    return openai.OpenAI(
        base_url=f"http://localhost:{d.port}/engines/v1/", max_retries=0, timeout=60, **kw
    )


def chat(client: openai.OpenAI, headers: dict[str, Any] | None = None) -> str:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        extra_headers=headers,
    )
    return reply.choices[0].message.content or ""


def http(d: DaemonHandle, method: str, path: str, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=d.base_url, timeout=30) as c:
        return c.request(method, path, headers=headers)


def assert_no_key_leaked(d: DaemonHandle) -> None:
    """No key, right or wrong, in the daemon's stderr, its log file or its rotated logs."""
    texts = [d.log_text()] + [
        p.read_text(errors="replace") for p in (d.home / "logs").rglob("*") if p.is_file()
    ]
    for key in (KEY, FILE_KEY, WRONG):
        for text in texts:
            assert key not in text


def test_tcp_without_a_key_is_401_in_openai_shape(keyed: DaemonHandle) -> None:
    """No key: the openai package raises AuthenticationError, with the daemon's message."""
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(tcp_client(keyed), {"Authorization": NO_AUTH})
    e = caught.value
    assert e.status_code == 401
    assert e.response.headers["WWW-Authenticate"].startswith("Bearer")
    body = e.response.json()
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "authentication_error"
    assert "requires an API key" in body["error"]["message"]


def test_tcp_with_a_wrong_key_is_401(keyed: DaemonHandle) -> None:
    """A wrong Bearer key, and a wrong x-api-key, are refused; neither is echoed back."""
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(tcp_client(keyed, api_key=WRONG))
    assert "not valid" in caught.value.message
    assert WRONG not in caught.value.response.text
    with pytest.raises(openai.AuthenticationError):
        chat(tcp_client(keyed), {"Authorization": NO_AUTH, "x-api-key": WRONG})


def test_tcp_with_bearer_key_and_x_api_key(keyed: DaemonHandle) -> None:
    """Bearer (openai sends it) and x-api-key (anthropic does), from the config and the file."""
    assert isinstance(chat(tcp_client(keyed, api_key=KEY)), str)
    assert isinstance(chat(tcp_client(keyed, api_key=FILE_KEY)), str)
    by_header = {"Authorization": NO_AUTH, "x-api-key": KEY}
    client = tcp_client(keyed)
    assert [m.id for m in client.models.list(extra_headers=by_header)]
    assert isinstance(chat(client, by_header), str)


def test_unix_socket_never_asks(keyed: DaemonHandle) -> None:
    """The openai package over the socket with a wrong key, and curl with none, get answers."""
    transport = httpx.HTTPTransport(uds=str(keyed.socket_path))
    with httpx.Client(transport=transport, timeout=60) as http_client:
        client = openai.OpenAI(
            base_url="http://localhost/engines/v1/",
            api_key=WRONG,
            http_client=http_client,
            max_retries=0,
        )
        assert isinstance(chat(client), str)
    status, text = curl(keyed, "GET", "/models")
    assert status == 200
    assert json.loads(text)


def test_management_routes_401_in_their_shape_and_preflights_pass(keyed: DaemonHandle) -> None:
    """/models answers {"error": "..."}; a CORS preflight needs no key; /metrics with a key."""
    resp = http(keyed, "GET", "/models")
    assert resp.status_code == 401
    assert isinstance(resp.json()["error"], str)
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="modelrunner"'
    preflight = http(
        keyed,
        "OPTIONS",
        "/engines/v1/chat/completions",
        Origin=ORIGIN,
        **{
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    refused = http(keyed, "GET", "/engines/v1/models", Origin=ORIGIN)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN  # the page can read why
    http(keyed, "GET", "/models", Authorization=f"Bearer {WRONG}")
    metrics = http(keyed, "GET", "/metrics", Authorization=f"Bearer {KEY}")
    assert metrics.status_code == 200
    for key in (KEY, FILE_KEY, WRONG):
        assert key not in metrics.text


def cli(d: DaemonHandle, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    outer = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER_")}
    return modelrunner(*argv, env={**outer, "MODEL_RUNNER_HOME": str(d.home), **env})


def test_cli_over_http_sends_model_runner_api_key(keyed: DaemonHandle) -> None:
    """MODEL_RUNNER_HOST with MODEL_RUNNER_API_KEY works; without, one line saying what to set."""
    host = {"MODEL_RUNNER_HOST": keyed.base_url}
    ok = cli(keyed, "ls", **host, MODEL_RUNNER_API_KEY=KEY)
    assert ok.returncode == 0, ok.stderr
    assert "tiny" in ok.stdout
    refused = cli(keyed, "ls", **host)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "MODEL_RUNNER_API_KEY" in refused.stderr
    wrong = cli(keyed, "ls", **host, MODEL_RUNNER_API_KEY=WRONG)
    assert wrong.returncode == 1
    assert WRONG not in wrong.stderr
    over_socket = cli(keyed, "ls")  # no MODEL_RUNNER_HOST: the socket, no key needed
    assert over_socket.returncode == 0, over_socket.stderr


def serve(d: DaemonHandle, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return modelrunner("--config", str(d.config_path), "serve", *argv, env={**d.env, **env})


def test_non_loopback_host_without_keys_is_refused(daemon: DaemonHandle, tmp_path: Path) -> None:
    """`serve --host 0.0.0.0` with no keys exits 1 with one line; an empty keys file too."""
    sock = str(daemon.home / "b.sock")
    refused = serve(daemon, "--host", "0.0.0.0", "--socket", sock, "--port", str(free_port()))
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("modelrunner: refusing to listen on 0.0.0.0:")
    assert "server.api_keys" in lines[0]
    assert "--allow-unauthenticated" in lines[0]
    empty = tmp_path / "keys"
    empty.write_text("# none yet\n")
    no_keys = serve(
        daemon,
        "--host",
        "0.0.0.0",
        "--socket",
        sock,
        "--port",
        str(free_port()),
        MODELRUNNER_SERVER_API_KEYS_FILE=str(empty),
    )
    assert no_keys.returncode == 1
    assert "holds no keys" in no_keys.stderr


def test_non_loopback_host_with_a_key_from_the_environment_starts(
    daemon_factory: Callable[..., DaemonHandle],
) -> None:
    """MODEL_RUNNER_API_KEYS is enough to listen on 0.0.0.0; requests then need the key."""
    d = daemon_factory()
    d.stop()
    d.env["MODEL_RUNNER_API_KEYS"] = f"{WRONG}x,{KEY}"
    d.sections["server"]["host"] = "0.0.0.0"
    d.config_path.write_text(yaml.safe_dump(d.sections))
    d.start()
    assert http(d, "GET", "/models").status_code == 401
    assert http(d, "GET", "/models", **{"x-api-key": KEY}).status_code == 200
    assert "daemon.remote_access" in d.log_text()
    assert_no_key_leaked(d)


def test_anthropic_and_ollama_clients_send_what_the_daemon_reads(keyed: DaemonHandle) -> None:
    """anthropic's x-api-key and ollama's Authorization header (on server.ollama_port) pass the
    check; a wrong key is refused for both with 401."""
    import anthropic
    import ollama

    def via_anthropic(key: str) -> int:
        client = anthropic.Anthropic(base_url=keyed.base_url, api_key=key, max_retries=0)
        try:
            client.models.list()
        except anthropic.APIStatusError as e:
            return e.status_code
        return 200

    ollama_url = f"http://127.0.0.1:{keyed.sections['server']['ollama_port']}"

    def via_ollama(key: str) -> int:
        client = ollama.Client(host=ollama_url, headers={"Authorization": f"Bearer {key}"})
        try:
            client.list()
        except ollama.ResponseError as e:
            return e.status_code
        return 200

    assert via_anthropic(WRONG) == 401
    assert via_anthropic(KEY) != 401
    assert via_ollama(WRONG) == 401
    assert via_ollama(KEY) == 200  # /api/tags on server.ollama_port


UNPARSEABLE = [
    f"Authorization: Bearer {KEY}\x01".encode(),  # a control character in the value
    f"Authorization: Bearer {KEY}{'a' * 9000}".encode(),  # over the parser's line limit
    f"Authorization : Bearer {KEY}".encode(),  # a space before the colon
    f"x-api-key: {KEY}\x7f".encode(),
]


def test_an_unparseable_credential_header_is_not_echoed(keyed: DaemonHandle) -> None:
    """aiohttp's parser quotes the header it refuses; the daemon's 400s and log do not."""
    for line in UNPARSEABLE:
        with socket.create_connection(("127.0.0.1", keyed.port), timeout=30) as s:
            s.sendall(b"GET /models HTTP/1.1\r\nHost: localhost\r\n" + line + b"\r\n\r\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split()[1] == b"400", raw[:300]
        assert KEY.encode() not in raw
        assert json.loads(body)["error"]
    # the teardown (assert_no_key_leaked) greps the daemon's logs for KEY
