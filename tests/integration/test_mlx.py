"""The MLX backend end to end, on real parts: the tiny MLX model (scripts/make_tiny_mlx.py) served
by the real mlx_lm (through runners/mlx_server.py) beside the real llama-server, in a real
daemon, with Debian's docker-registry and the openai, anthropic and ollama packages as clients."""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import psutil
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_cli import ok
from tests.integration.test_daemon import curl

pytestmark = [pytest.mark.llama, pytest.mark.mlx]

MLX = "test/tiny-mlx:v1"
GGUF = "test/tiny-gguf:v1"
HI = [{"role": "user", "content": "hello world"}]


def oa(d: DaemonHandle, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=d.base_url + prefix, api_key="unused", max_retries=0, timeout=60)


def ps(d: DaemonHandle) -> list[dict[str, Any]]:
    status, text = curl(d, "GET", "/engines/ps")
    assert status == 200, text
    rows: list[dict[str, Any]] = json.loads(text)
    return rows


def runner_processes(d: DaemonHandle) -> list[psutil.Process]:
    """Every runner process of this daemon's home (llama-server or the MLX launcher)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any(str(d.home) in part for part in cmd) and (
            "llama" in " ".join(cmd[:1]) or any("mlx_server.py" in p for p in cmd)
        ):
            found.append(proc)
    return found


def wait_for(check: Any, timeout_s: float = 30.0) -> Any:
    """Poll an external process's state (the daemon's) until *check* is truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.registry
def test_packaged_pushed_pulled_and_answered_by_every_family(
    daemon: DaemonHandle, registry: Any, tiny_mlx: Path
) -> None:
    """package --safetensors-dir, push, rm, pull; then OpenAI, Anthropic, Ollama and Responses,
    streamed and not, all through one MLX runner on a Unix socket only its owner can reach."""
    ref = f"{registry.host}/test/tiny-mlx:v1"
    ok("package", "--safetensors-dir", str(tiny_mlx), ref, env=daemon.env)
    listing = ok("ls", env=daemon.env)
    assert "FORMAT" in listing.splitlines()[0]
    assert "safetensors" in listing.splitlines()[1]
    status, text = curl(
        daemon, "POST", f"/models/{ref}/push", headers=("Accept: application/json",)
    )
    assert status == 200, text
    assert curl(daemon, "DELETE", f"/models/{ref}")[0] == 200
    status, text = curl(
        daemon, "POST", "/models/create", {"from": ref}, headers=("Accept: application/json",)
    )
    assert status == 200, text
    status, text = curl(daemon, "GET", f"/models/{ref}?remote=true")
    assert status == 200, text
    remote = json.loads(text)
    assert remote["config"]["format"] == "safetensors"
    assert remote["config"]["safetensors"]["format"] == "mlx"

    client = oa(daemon, "/engines/mlx/v1")
    chat = client.chat.completions.create(model=ref, messages=HI, max_tokens=5)
    assert chat.choices[0].message.content
    assert chat.model == ref
    streamed = client.chat.completions.create(model=ref, messages=HI, max_tokens=5, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    text_answer = oa(daemon).completions.create(model=ref, prompt="the quick", max_tokens=4)
    assert text_answer.choices[0].text
    events = list(
        oa(daemon).responses.create(model=ref, input="hi", max_output_tokens=4, stream=True)
    )
    assert events[-1].type == "response.completed"

    ac = anthropic.Anthropic(base_url=daemon.base_url, api_key="unused", max_retries=0, timeout=60)
    message = ac.messages.create(model=ref, max_tokens=5, messages=HI)
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.usage.output_tokens > 0
    with ac.messages.stream(model=ref, max_tokens=5, messages=HI) as stream:
        said = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert said
    assert final.stop_reason in ("max_tokens", "end_turn")

    oc = ollama.Client(host=daemon.base_url, timeout=60)
    answer = oc.chat(model=ref, messages=HI, options={"num_predict": 4})
    assert answer.message.content
    parts = list(oc.chat(model=ref, messages=HI, stream=True, options={"num_predict": 4}))
    assert parts[-1].done
    assert oc.generate(model=ref, prompt="hello", options={"num_predict": 3}).response

    (row,) = ps(daemon)
    assert row["backend_name"] == "mlx"
    assert row["state"] == "ready"
    (proc,) = runner_processes(daemon)
    sockets = [Path(a) for a in proc.cmdline() if a.endswith(".sock")]
    assert sockets
    assert stat.S_IMODE(sockets[0].stat().st_mode) & 0o077 == 0
    assert not [c for c in proc.net_connections(kind="inet") if c.status == "LISTEN"]

    engines = json.loads(curl(daemon, "GET", "/engines/status")[1])
    assert engines["mlx"].startswith("Running: mlx 0.")
    assert engines["llama.cpp"].startswith("Running: llama.cpp")
    metrics = curl(daemon, "GET", "/metrics")[1]
    assert 'backend="mlx"' in metrics
    records = json.loads(curl(daemon, "GET", "/engines/requests")[1])[0]["records"]
    assert {r["backend"] for r in records} == {"mlx"}


def test_modes_and_backends_mlx_has_not_are_clear_4xx(daemon: DaemonHandle, tiny_mlx: Path) -> None:
    """Embeddings and rerank on an MLX model, or the llama.cpp prefix: a 400 naming why."""
    daemon.add_mlx_model(MLX, tiny_mlx)
    with pytest.raises(openai.BadRequestError, match="no embedding mode"):
        oa(daemon).embeddings.create(model=MLX, input="hello")
    status, text = curl(daemon, "POST", "/rerank", {"model": MLX, "query": "a", "documents": ["b"]})
    assert status == 400, text
    assert "no reranking mode" in text
    with pytest.raises(openai.BadRequestError, match="runs on the mlx backend"):
        oa(daemon, "/engines/llama.cpp/v1").chat.completions.create(model=MLX, messages=HI)
    oc = ollama.Client(host=daemon.base_url, timeout=60)
    with pytest.raises(ollama.ResponseError, match="no embedding mode"):
        oc.embed(model=MLX, input="hello")
    assert ps(daemon) == []  # nothing was loaded for any of them


def test_a_forced_tool_choice_or_an_image_is_a_400_on_mlx(
    daemon: DaemonHandle, tiny_mlx: Path
) -> None:
    """mlx_lm takes no grammar, so no family's forced choice can be held there: a 400 naming
    the backend (chat, Responses, Anthropic); an image for the text-only model: a 400 too."""
    daemon.add_mlx_model(MLX, tiny_mlx)
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError, match="cannot force a tool call"):
        oa(daemon).chat.completions.create(
            model=MLX, messages=HI, tools=tools, tool_choice="required", max_tokens=3
        )
    with pytest.raises(openai.BadRequestError, match="mlx backend"):
        oa(daemon).responses.create(
            model=MLX,
            input="hi",
            tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            tool_choice="required",
        )
    ac = anthropic.Anthropic(base_url=daemon.base_url, api_key="unused", max_retries=0, timeout=60)
    anthropic_tools: Any = [{"name": "f", "input_schema": {"type": "object"}}]
    with pytest.raises(anthropic.BadRequestError, match="cannot force a tool call"):
        ac.messages.create(
            model=MLX, max_tokens=3, messages=HI, tools=anthropic_tools, tool_choice={"type": "any"}
        )
    image: Any = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    with pytest.raises(anthropic.BadRequestError, match="text only"):
        ac.messages.create(model=MLX, max_tokens=3, messages=[{"role": "user", "content": [image]}])
    with pytest.raises(anthropic.BadRequestError, match="count_tokens is not available"):
        ac.messages.count_tokens(model=MLX, messages=HI)
    assert ps(daemon) == []  # refused before any load


def test_anthropic_tools_on_mlx_auto_and_none(daemon: DaemonHandle, tiny_mlx: Path) -> None:
    """Tools with tool_choice auto (and none, sent without the tools) reach mlx_lm as chat's;
    the answers come back as Anthropic messages, whole and streamed."""
    daemon.add_mlx_model(MLX, tiny_mlx)
    ac = anthropic.Anthropic(base_url=daemon.base_url, api_key="unused", max_retries=0, timeout=60)
    tools: Any = [{"name": "f", "description": "d", "input_schema": {"type": "object"}}]
    choices: Any = ({"type": "auto"}, {"type": "none"})
    for choice in choices:
        message = ac.messages.create(
            model=MLX,
            max_tokens=4,
            messages=HI,
            tools=tools,
            tool_choice=choice,
        )
        assert message.type == "message"
        assert message.stop_reason in ("max_tokens", "end_turn", "tool_use")
        with ac.messages.stream(
            model=MLX,
            max_tokens=4,
            messages=HI,
            tools=tools,
            tool_choice=choice,
        ) as stream:
            final = stream.get_final_message()
        assert final.usage.output_tokens > 0


def test_without_mlx_a_request_names_the_install_command(
    daemon_factory: Any, tiny_mlx: Path, tmp_path: Path
) -> None:
    """runners.mlx_python without mlx: engines/status says so, a request gets a 503 with the fix."""
    bare = tmp_path / "bare-python"  # a Python that cannot import mlx
    bare.write_text('#!/bin/sh\nexec /usr/bin/env -i /usr/bin/python3 -I -S "$@"\n')
    bare.chmod(0o700)
    d = daemon_factory(runners={"mlx_python": str(bare)})
    d.add_mlx_model(MLX, tiny_mlx)
    engines = json.loads(curl(d, "GET", "/engines/status")[1])
    assert engines["mlx"].startswith("Not Installed: ")
    assert "pip install 'modelrunner[mlx]'" in engines["mlx"]
    with pytest.raises(openai.APIStatusError) as caught:
        oa(d).chat.completions.create(model=MLX, messages=HI, max_tokens=3)
    assert caught.value.status_code == 503
    assert "pip install 'modelrunner[mlx]'" in str(caught.value)


def test_gguf_and_mlx_alternate_under_max_loaded_1_without_orphans(
    daemon_factory: Any, tiny_mlx: Path, tiny_gguf: Path
) -> None:
    """Each request evicts the other backend's runner; never two runner processes at once."""
    d = daemon_factory(runners={"max_loaded": 1})
    d.add_mlx_model(MLX, tiny_mlx)
    d.add_model(GGUF, tiny_gguf)
    client = oa(d)
    seen = []
    for model in (MLX, GGUF, MLX, GGUF):
        answer = client.chat.completions.create(model=model, messages=HI, max_tokens=3)
        assert answer.choices[0].message.content is not None
        rows = wait_for(
            lambda: [r for r in ps(d) if r["state"] == "ready"] if len(ps(d)) == 1 else None
        )
        assert rows, ps(d)
        assert len(rows) == 1, ps(d)
        seen.append(rows[0]["backend_name"])
        assert len(wait_for(lambda: len(runner_processes(d)) == 1 and runner_processes(d))) == 1
    assert seen == ["mlx", "llama.cpp", "mlx", "llama.cpp"]
    assert d.stop() == 0
    assert runner_processes(d) == []


def test_a_runner_killed_mid_stream_is_reported_and_restarted(
    daemon_factory: Any, tiny_mlx: Path
) -> None:
    """SIGKILL of the MLX runner under a stream: the stream ends with an error event, the crash
    is logged with the backend, and the pinned model is back (a new process) without a request."""
    d = daemon_factory(models={MLX: {"pinned": True}}, runners={"crash_backoff_s": 0.1})
    d.add_mlx_model(MLX, tiny_mlx)
    body = json.dumps({"model": MLX, "messages": HI, "max_tokens": 100_000, "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    while not response.readline().startswith(b"data: "):  # ": keepalive" comments come first
        pass
    (row,) = ps(d)
    os.kill(row["pid"], signal.SIGKILL)
    tail = b""
    try:
        for line in response:
            if line.strip():
                tail = line
    except http.client.IncompleteRead:
        tail = b"<cut>"
    conn.close()
    print(f"MLX runner killed mid-stream, the stream ended with: {tail[:300]!r}")
    assert tail == b"<cut>" or b"error" in tail, tail
    back = wait_for(lambda: [r for r in ps(d) if r["state"] == "ready" and r["pid"] != row["pid"]])
    assert back, ps(d)
    assert back[0]["backend_name"] == "mlx"
    assert '"runner.crashed"' in d.log_text() or "runner.crashed" in d.log_text()
    answer = oa(d).chat.completions.create(model=MLX, messages=HI, max_tokens=3)
    assert answer.choices[0].message.content is not None


def test_sigterm_drains_both_backends(daemon_factory: Any, tiny_mlx: Path, tiny_gguf: Path) -> None:
    """SIGTERM with an MLX and a llama.cpp runner loaded: exit 0, no runner left behind."""
    d = daemon_factory(runners={"max_loaded": 2})
    d.add_mlx_model(MLX, tiny_mlx)
    d.add_model(GGUF, tiny_gguf)
    for model in (MLX, GGUF):
        oa(d).chat.completions.create(model=model, messages=HI, max_tokens=2)
    assert sorted(r["backend_name"] for r in ps(d)) == ["llama.cpp", "mlx"]
    pids = [r["pid"] for r in ps(d)]
    assert d.stop() == 0
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert runner_processes(d) == []
