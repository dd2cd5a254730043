"""Streams copied by a pump thread (server/relay/pump.py) on the real daemon and llama-server.

``stream_coalesce_ms: 0`` makes every one-chunk read "slow", so the tiny model's fast stream
goes to a pump and back to the loop many times over (each multi-chunk read, each write the
client cannot take at once, the answer's end): the churn a real model's stream sees only at its
edges.  What the client gets must be what the loop alone sends, to the byte; a client that leaves
or a runner that dies mid-pump ends as it does without one."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from typing import Any

import aiohttp
import psutil
import pytest

from tests.reliability.conftest import Target, pid_of, seed_models, start_daemon
from tests.reliability.slots import wait_all_idle, wait_any_busy
from tests.reliability.test_faults import (
    LONG_STREAM,
    MODEL,
    chat_ok,
    eventually_true,
    runner_socket,
    runners_of,
)

pytestmark = pytest.mark.llama

PUMPED = {"server": {"stream_coalesce_ms": 0, "stream_threads": 8}}
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "tell"}],
    "max_tokens": 300,
    "ignore_eos": True,
    "temperature": 0,
    "seed": 1,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def daemon_with(request: pytest.FixtureRequest, gguf: Any, **sections: Any) -> Target:
    target = await start_daemon(request, **sections)
    await seed_models(target, {MODEL: gguf})
    return target


@pytest.fixture
def gguf(tiny_gguf_factory: Any, llama_server_bin: Any) -> Any:
    """The faults' long-context model; the engine found before any test's loop runs."""
    return tiny_gguf_factory(seed=7, name="faults", ctx=8192)


def raw_stream(port: int, times: int, slow: bool = False) -> list[bytes]:
    """*times* streamed answers on one keep-alive connection, each as the client got it."""
    s = socket.create_connection(("127.0.0.1", port))
    if slow:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(60)
    body = json.dumps(BODY).encode()
    head = (
        "POST /engines/v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    answers, buf = [], b""
    for _ in range(times):
        s.sendall(head + body)
        while b"\r\n0\r\n\r\n" not in buf:
            if slow:
                time.sleep(0.002)
            data = s.recv(512 if slow else 65536)
            assert data, buf[-200:]
            buf += data
        end = buf.index(b"\r\n0\r\n\r\n") + 7
        answers.append(buf[:end])
        buf = buf[end:]
    s.close()
    return answers


def content(answer: bytes) -> tuple[str, list[Any]]:
    """The streamed text and the usage, from a raw chunked SSE answer."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    payload = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        payload, rest = payload + rest[:size], rest[size + 2 :]
    text, usage = "", []
    for line in payload.split(b"\n"):
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
            if event.get("usage"):
                usage.append(event["usage"]["completion_tokens"])
    return text, usage


async def test_a_pumped_stream_is_the_loops_to_the_byte(
    request: pytest.FixtureRequest, gguf: Any
) -> None:
    """Three streams on one keep-alive connection, fast and slow readers: the same text and
    usage as from a daemon whose loop copies every token, and the request log holds it all."""
    pumped = await daemon_with(request, gguf, **PUMPED)
    loop_only = await daemon_with(
        request, gguf, server={"stream_coalesce_ms": 0, "stream_threads": 0}
    )
    want = [content(a) for a in await asyncio.to_thread(raw_stream, loop_only.handle.port, 2)]
    assert want[0] == want[1]
    assert want[0][1] == [300], want[0][1]
    got = await asyncio.to_thread(raw_stream, pumped.handle.port, 3)
    got += await asyncio.to_thread(raw_stream, pumped.handle.port, 1, True)
    for answer in got:
        assert content(answer) == want[0]
    async with (
        aiohttp.ClientSession(base_url=pumped.base_url) as http,
        http.get("/engines/requests", params={"model": MODEL}) as resp,
    ):
        records = await resp.json()
    logged = records if isinstance(records, list) else records.get("requests", records)
    assert any(want[0][0] in json.dumps(r) for r in logged), str(logged)[:500]


async def test_a_client_that_leaves_a_pumped_stream_frees_the_slot(
    request: pytest.FixtureRequest, gguf: Any
) -> None:
    target = await daemon_with(request, gguf, **PUMPED)
    pid = pid_of(target.handle)
    async with aiohttp.ClientSession(base_url=target.base_url) as http:
        await chat_ok(http)
        fds0 = psutil.Process(pid).num_fds()
        (runner,) = runners_of(pid)
        sock = runner_socket(runner)
        for _ in range(5):
            resp = await http.post("/engines/v1/chat/completions", json=LONG_STREAM)
            for _ in range(50):
                await resp.content.readline()
            await wait_any_busy(sock)
            resp.close()
            await wait_all_idle(sock)
        await chat_ok(http)
    await eventually_true(lambda: psutil.Process(pid).num_fds() <= fds0)


async def test_a_runner_killed_mid_pump_ends_the_stream_with_an_error(
    request: pytest.FixtureRequest, gguf: Any
) -> None:
    target = await daemon_with(request, gguf, **PUMPED)
    pid = pid_of(target.handle)
    async with aiohttp.ClientSession(base_url=target.base_url) as http:
        resp = await http.post("/engines/v1/chat/completions", json=LONG_STREAM)
        assert resp.status == 200
        for _ in range(50):
            await resp.content.readline()
        (runner,) = runners_of(pid)
        runner.send_signal(signal.SIGKILL)
        tail = b""
        try:
            async for line in resp.content:
                if line.strip():
                    tail = line
        except aiohttp.ClientPayloadError:
            tail = b"<cut>"
        resp.close()
        assert tail == b"<cut>" or b"error" in tail, tail
        await chat_ok(http)
    assert psutil.pid_exists(pid)


async def test_a_pumped_stream_longer_than_the_read_timeout_is_not_cut(
    request: pytest.FixtureRequest, gemma_gguf: Any, llama_server_bin: Any
) -> None:
    """The read timeout is silence, not length: a pump's reads count as the runner talking
    (the silence check sees the bytes grow), so a real model's stream that outlasts the
    timeout, one token per read and all of it in the pump, ends whole."""
    timeout_s = 0.4
    target = await daemon_with(
        request, gemma_gguf, server={"stream_threads": 8, "upstream_read_timeout_s": timeout_s}
    )
    async with aiohttp.ClientSession(base_url=target.base_url) as http:
        await chat_ok(http)  # loaded: the timed stream is all tokens
        started = time.monotonic()
        body = {**BODY, "max_tokens": 64}
        async with http.post("/engines/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            raw = await resp.read()
    assert time.monotonic() - started > 2 * timeout_s  # it did outlast the timeout
    assert b'"completion_tokens":64' in raw.replace(b" ", b""), raw[-300:]
    assert b"error" not in raw, raw[-300:]
