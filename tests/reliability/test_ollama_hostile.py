"""Hostile input on Ollama's routes: always a JSON 4xx in Ollama's shape ({"error": "…"}), and
the daemon keeps answering; a client that vanishes mid-stream frees the runner's slot."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.reliability.conftest import Target, pid_of, seed_models, start_daemon
from tests.reliability.slots import wait_all_idle, wait_any_busy
from tests.reliability.test_faults import runner_socket, runners_of
from tests.reliability.test_hostile import BAD_BODIES, BAD_REFERENCES, assert_json_4xx

pytestmark = pytest.mark.llama

MODEL = "test/olla"
POSTS = [
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/api/pull",
    "/api/copy",
]

# (path, body) that are wrong in one field, with a model that exists: each a 400.
BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("/api/chat", {"messages": "hi"}),
    ("/api/chat", {"messages": ["hi"]}),
    ("/api/chat", {"messages": [{"content": "no role"}]}),
    ("/api/chat", {"messages": [{"role": "user", "content": 5}]}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": "abc"}]}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": [3]}]}),
    ("/api/chat", {"messages": [{"role": "assistant", "tool_calls": [{"f": 1}]}]}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "tools": "all"}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "format": 5}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "format": "yaml"}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "keep_alive": True}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "keep_alive": "soon"}),
    ("/api/generate", {"prompt": 5}),
    ("/api/generate", {"prompt": "x", "system": ["s"]}),
    ("/api/generate", {"prompt": "x", "options": "hot"}),
    ("/api/generate", {"prompt": "x", "options": {"temperature": "hot"}}),
    ("/api/generate", {"prompt": "x", "options": {"temperature": True}}),
    ("/api/generate", {"prompt": "x", "options": {"num_predict": 1.5}}),
    ("/api/generate", {"prompt": "x", "options": {"top_k": [1]}}),
    ("/api/generate", {"prompt": "x", "options": {"stop": 3}}),
    ("/api/generate", {"prompt": "x", "options": {"stop": ["a", 1]}}),
    ("/api/generate", {"prompt": "x", "options": {"num_ctx": -4}}),
    ("/api/generate", {"prompt": "x", "options": {"seed": "one"}}),
    ("/api/generate", {"prompt": "x", "raw": True, "images": ["aGk="]}),
    ("/api/generate", {"prompt": "x", "images": ["aGk="]}),  # no projector: text only
    ("/api/embed", {"input": 3}),
    ("/api/embed", {"input": ["a", 2]}),
    ("/api/embed", {"input": "a", "dimensions": 0}),
    ("/api/embed", {"input": "a", "dimensions": "64"}),
    ("/api/embeddings", {"prompt": ["a"]}),
    ("/api/copy", {"destination": "Bad Name"}),
    ("/api/copy", {"destination": 5}),
    ("/api/copy", {}),
]


@pytest.fixture(scope="module")
def served(llama_server_bin: Path, tiny_gguf: Path) -> Iterator[Target]:
    """One daemon with one model for the module; nothing here starts a runner (every bad
    request is refused before one is acquired), so no test leaves a process behind."""
    from tests.fixtures.daemon import DaemonHandle

    handle = DaemonHandle({}, llama_server_bin)
    try:
        handle.add_model(MODEL, tiny_gguf)
        yield Target(base_url=handle.base_url.rstrip("/"), handle=handle)
    finally:
        handle.close()


@pytest.fixture
async def http(served: Target) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=served.base_url, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


async def assert_ollama_4xx(resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    """test_hostile's JSON 4xx check, plus Ollama's shape: ``error`` is the message itself."""
    await assert_json_4xx(resp, what)
    payload: dict[str, Any] = json.loads(await resp.read())
    assert isinstance(payload["error"], str), f"{what}: not Ollama's shape: {payload!r}"
    assert payload["error"], what
    return payload


async def assert_alive(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/tags") as resp:
        assert resp.status == 200
        assert [m["model"] for m in (await resp.json())["models"]] == [f"{MODEL}:latest"]
    async with http.post("/api/show", json={"model": MODEL}) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(("label", "body"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_bodies(http: aiohttp.ClientSession, label: str, body: bytes) -> None:
    """Malformed, deep or mistyped JSON on every Ollama POST route (and the DELETE)."""
    headers = {"Content-Type": "application/json"}
    for path in POSTS:
        async with http.post(path, data=body, headers=headers) as resp:
            await assert_ollama_4xx(resp, f"{path} {label}")
    async with http.delete("/api/delete", data=body, headers=headers) as resp:
        await assert_ollama_4xx(resp, f"/api/delete {label}")
    await assert_alive(http)


@pytest.mark.parametrize("ref", BAD_REFERENCES, ids=range(len(BAD_REFERENCES)))
async def test_bad_references(http: aiohttp.ClientSession, ref: str) -> None:
    """A hostile model name is a JSON 4xx everywhere, pull included (nothing is fetched)."""
    body = {"model": ref, "prompt": "x", "input": "x", "messages": []}
    for path in POSTS:
        async with http.post(path, json={**body, "source": ref, "destination": ref}) as resp:
            await assert_ollama_4xx(resp, f"{path} {ref!r}")
    async with http.delete("/api/delete", json={"model": ref}) as resp:
        await assert_ollama_4xx(resp, f"delete {ref!r}")
    async with http.post("/api/copy", json={"source": MODEL, "destination": ref}) as resp:
        await assert_ollama_4xx(resp, f"copy to {ref!r}")
    await assert_alive(http)


@pytest.mark.parametrize(
    ("path", "body"), BAD_FIELDS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD_FIELDS)]
)
async def test_bad_fields(http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> None:
    """One wrong field with a model that exists: 400 with a message naming the problem."""
    source = {"source": MODEL} if path == "/api/copy" else {"model": MODEL}
    async with http.post(path, json={**source, **body}) as resp:
        assert resp.status == 400, await resp.text()
        await assert_ollama_4xx(resp, f"{path} {body!r}")
    await assert_alive(http)


async def test_unknown_model_and_route(http: aiohttp.ClientSession) -> None:
    for path in ("/api/chat", "/api/generate", "/api/show", "/api/embed"):
        async with http.post(path, json={"model": "no/such", "messages": []}) as resp:
            assert resp.status == 404
            assert "no/such" in (await assert_ollama_4xx(resp, path))["error"]
    async with http.get("/api/nothing") as resp:
        assert resp.status == 404
        await assert_ollama_4xx(resp, "/api/nothing")
    async with http.get("/api/chat") as resp:
        assert resp.status == 405
        await assert_ollama_4xx(resp, "GET /api/chat")


async def test_vanished_client_frees_the_slot(
    request: pytest.FixtureRequest, tiny_gguf_factory: Any, llama_server_bin: Path
) -> None:
    """Close an NDJSON stream after its first line: llama-server stops generating.

    (*llama_server_bin* is asked for here so it is found before the loop runs.)"""
    target = await start_daemon(request)
    # 8192 trained tokens: a long answer lasts seconds, so the disconnect lands mid-stream.
    await seed_models(target, {MODEL: tiny_gguf_factory(seed=5, name="olla", ctx=8192)})
    async with aiohttp.ClientSession(base_url=target.base_url) as http:
        await _cut_streams(target, http)


async def _cut_streams(target: Target, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 1}}
    async with http.post("/api/generate", json=body) as resp:
        assert resp.status == 200, await resp.text()
    pid = pid_of(target.handle)
    fds0 = psutil.Process(pid).num_fds()
    (runner,) = runners_of(pid)
    sock = runner_socket(runner)
    long = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "talk"}],
        "options": {"num_predict": 100000},
    }
    for _ in range(3):
        resp = await http.post("/api/chat", json=long)
        assert resp.status == 200
        assert json.loads(await resp.content.readline())["done"] is False
        await wait_any_busy(sock)
        resp.close()
        await wait_all_idle(sock)
    assert psutil.Process(pid).num_fds() <= fds0 + 2


async def test_runner_killed_mid_stream_ends_with_an_ollama_error_line(
    request: pytest.FixtureRequest, tiny_gguf_factory: Any, llama_server_bin: Path
) -> None:
    """The NDJSON stream's last line is Ollama's {"error": …} (the client raises it), never an
    SSE event; the daemon stays up and the next chat works."""
    target = await start_daemon(request)
    await seed_models(target, {MODEL: tiny_gguf_factory(seed=5, name="olla", ctx=8192)})
    pid = pid_of(target.handle)
    long = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "talk"}],
        "options": {"num_predict": 100000},
    }
    async with aiohttp.ClientSession(base_url=target.base_url) as http:
        resp = await http.post("/api/chat", json=long)
        assert resp.status == 200
        assert json.loads(await resp.content.readline())["done"] is False
        (runner,) = runners_of(pid)
        runner.send_signal(signal.SIGKILL)
        lines = [line async for line in resp.content if line.strip()]
        resp.close()
        last = json.loads(lines[-1])
        assert set(last) == {"error"}, last
        assert "runner" in last["error"]
        body = {"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 1}}
        async with http.post("/api/generate", json=body) as again:
            assert again.status == 200, await again.text()
    assert psutil.pid_exists(pid)
