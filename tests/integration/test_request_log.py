"""The request log (`GET /engines/requests`, `modelrunner requests`) against the real daemon:
the real openai client makes the requests, curl and the real CLI read them back."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_cli import CLI
from tests.integration.test_daemon import client, curl

pytestmark = pytest.mark.llama

MODEL = "test/tiny"
RECORD_KEYS = {
    "id",
    "model",
    "method",
    "url",
    "request",
    "response",
    "error",
    "timestamp",
    "status_code",
    "user_agent",
}


@pytest.fixture
def served(daemon: DaemonHandle, tiny_gguf: Path) -> DaemonHandle:
    daemon.add_model(MODEL, tiny_gguf)
    return daemon


def cli_env(d: DaemonHandle) -> dict[str, str]:
    return {**d.env, "MODEL_RUNNER_HOME": str(d.home)}


def log_of(d: DaemonHandle, query: str = "") -> list[dict[str, Any]]:
    status, text = curl(d, "GET", "/engines/requests" + query)
    assert status == 200, text
    groups: list[dict[str, Any]] = json.loads(text)
    return groups


def test_chat_streamed_chat_and_failure_in_dockers_shape(served: DaemonHandle) -> None:
    """A chat, a streamed chat (folded into one body) and a failed request, in Docker's shape."""
    oa = client(served)
    chat = oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    stream = oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "streamed"}], max_tokens=5, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.BadRequestError):  # far beyond the tiny model's 512-token context
        oa.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=1
        )
    image = "data:image/png;base64," + "A" * 50_000  # shortened in the log, as Docker's
    secret = "sk-do-not-log-4242"
    oa.with_options(api_key=secret).completions.create(
        model=MODEL,
        prompt="x",
        max_tokens=1,
        extra_body={"img": image},
        extra_headers={"x-api-key": secret},
        extra_query={"api_key": secret},
    )

    status, raw = curl(served, "GET", "/engines/requests")
    assert secret not in raw  # neither the Authorization nor the x-api-key header, nor the query
    groups = log_of(served)
    assert len(groups) == 1
    group = groups[0]
    assert {"model", "count", "config", "records"} <= group.keys()
    assert group["model"] == "test/tiny:latest"
    assert group["count"] == len(group["records"]) == 4
    plain, folded, failed, media = group["records"]
    for record in group["records"]:
        assert record.keys() >= RECORD_KEYS
        assert record["method"] == "POST"
        assert record["user_agent"].startswith("OpenAI/Python")
        assert isinstance(record["timestamp"], int)

    assert plain["url"] == "/engines/llama.cpp/v1/chat/completions"
    assert plain["status_code"] == 200
    assert plain["error"] == ""
    assert json.loads(plain["request"])["messages"][0]["content"] == "hello"
    assert json.loads(plain["response"])["choices"][0]["message"]["content"] == (
        chat.choices[0].message.content
    )

    assert folded["status_code"] == 200
    assert '"stream": true' in folded["request"] or '"stream":true' in folded["request"]
    answer = json.loads(folded["response"])  # one object, not the SSE chunks
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": streamed}
    assert "data:" not in folded["response"]

    assert failed["status_code"] == 400
    assert failed["response"] == ""
    assert "context" in json.loads(failed["error"])["error"]["message"]

    assert len(media["request"]) < 1000
    assert "[truncated 49900 chars]" in media["request"]

    # ?model= filters: by the name the client used, and an unknown model is a 404.
    assert log_of(served, "?model=test/tiny") == groups
    status, text = curl(served, "GET", "/engines/requests?model=test/absent")
    assert status == 404
    assert "error" in json.loads(text)


class LiveCLI:
    """The real CLI following the daemon (`requests -f`, `ps -w`); stdout lines in a queue."""

    def __init__(self, d: DaemonHandle, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args],
            env=cli_env(d),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def stderr_line(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.readline()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_requests_follow_shows_a_new_request(served: DaemonHandle) -> None:
    """`modelrunner requests -f --json` prints a request made after it connected."""
    cli = LiveCLI(served, "requests", "-f", "--json")
    try:
        assert "Connected" in cli.stderr_line()  # subscribed: what follows is new
        oa = client(served)
        oa.completions.create(model=MODEL, prompt="followed", max_tokens=1)
        done = time.monotonic()
        record = json.loads(cli.lines.get(timeout=30))
        seen_after_s = time.monotonic() - done
        print(f"requests -f printed the record {seen_after_s * 1000:.0f} ms after the answer")
        assert record["model"] == "test/tiny:latest"
        assert json.loads(record["request"])["prompt"] == "followed"
        assert record["status_code"] == 200
    finally:
        cli.close()


def test_requests_cli_table_and_json(served: DaemonHandle) -> None:
    """`modelrunner requests` prints one row per request; `--json` prints Docker's JSON."""
    client(served).completions.create(model=MODEL, prompt="tabled", max_tokens=1)
    env = cli_env(served)
    table = subprocess.run(
        [*CLI, "requests"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "test/tiny" in table
    assert "/v1/completions" in table
    assert "200" in table
    raw = subprocess.run(
        [*CLI, "requests", "--json", "--model", MODEL],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(raw)[0]["records"][0]["url"] == "/engines/llama.cpp/v1/completions"
    bad = subprocess.run(
        [*CLI, "requests", "--include-existing"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "--include-existing" in bad.stderr


def test_request_log_off(daemon_factory: Any, tiny_gguf: Path) -> None:
    """`server.request_log: false`: nothing is kept and the route says why (404)."""
    d = daemon_factory(server={"request_log": False})
    d.add_model(MODEL, tiny_gguf)
    client(d).completions.create(model=MODEL, prompt="x", max_tokens=1)
    status, text = curl(d, "GET", "/engines/requests")
    assert status == 404
    assert "server.request_log" in json.loads(text)["error"]
    assert os.path.exists(d.socket_path)
