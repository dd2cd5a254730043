"""The pass-through proxy against a scripted upstream on a Unix socket (no llama-server):
chunks arrive as they are written, a vanished client cancels the upstream request, and an
upstream that dies mid-stream ends the answer with an error event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from modelrunner.config import Config, KVCacheConfig
from modelrunner.runners.kvcache import KVCache
from modelrunner.server.api.openai_api import serve
from modelrunner.server.middleware import make_error_middleware
from modelrunner.server.observe.events import EventBus
from modelrunner.server.observe.metrics import Metrics
from modelrunner.server.observe.request_log import RequestLog
from modelrunner.server.relay.proxy import UpstreamPool


class Upstream:
    """A fake llama-server: SSE chunks released one at a time by the test."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        if request.query.get("json"):
            return web.json_response({"usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if request.query.get("split"):  # the final event cut in two, mid-key
            await resp.write(b'data: {"choices": [], "timings": {"prompt_n": 4, "pred')
            await self.release.wait()
            await resp.write(b'icted_n": 7}}\n\ndata: [DONE]\n\n')
            return resp
        try:
            await resp.write(b"data: one\n\n")
            await self.release.wait()
            if request.query.get("die"):
                assert request.transport is not None
                request.transport.abort()  # the runner "crashes" mid-answer
                return resp
            await resp.write(b"data: two\n\n")
            await resp.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return resp


class FakeSupervisor:
    def __init__(self, socket_path: Path) -> None:
        self.runner = SimpleNamespace(
            socket_path=socket_path,
            kv_hit_pending=False,
            restored_tokens=0,
            kv_slots=None,
            backend="llama.cpp",
        )
        self.kv = KVCache(KVCacheConfig(path=socket_path.parent / "kv"))  # note_usage only

    @contextlib.asynccontextmanager
    async def acquire(self, *_: Any) -> AsyncIterator[Any]:
        yield self.runner


def make_state(sock: Path, pool: UpstreamPool) -> SimpleNamespace:
    """What serve() reaches; the request log and event bus on, as in the daemon (the tap runs)."""
    return SimpleNamespace(
        supervisor=FakeSupervisor(sock),
        upstream=pool,
        metrics=Metrics(),
        config=Config(),
        settings=SimpleNamespace(get=lambda _model_id: None),
        events=EventBus(),
        requests=RequestLog(),
    )


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    fake = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    sock = tmp / "up.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        yield fake, sock
    finally:
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def proxy(aiohttp_client: Any, upstream: tuple[Upstream, Path]) -> Any:
    _, sock = upstream
    pool = UpstreamPool(connect_timeout_s=2, read_timeout_s=10)
    state = make_state(sock, pool)

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = "/v1/chat/completions" + ("?" + request.query_string if request.query_string else "")
        return await serve(state, request, "sha256:x", "ai/x", "completion", path, body, None)  # type: ignore[arg-type]

    app = web.Application(middlewares=[make_error_middleware()])
    app.router.add_post("/engines/v1/chat/completions", handler)

    async def close_pool(_: web.Application) -> None:
        await pool.close()

    app.on_cleanup.append(close_pool)
    client = await aiohttp_client(app)
    client.state = state
    return client


async def test_chunks_pass_through_as_they_arrive(proxy: Any, upstream: Any) -> None:
    """The second chunk is only written after the client holds the first: no buffering."""
    fake, _ = upstream
    body = b'{"model": "ai/x", "stream": true, "extra": [1, 2]}'
    async with asyncio.timeout(10):
        resp = await proxy.post(
            "/engines/v1/chat/completions",
            data=body,
            headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
        )
        assert resp.status == 200
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert await resp.content.readline() == b"data: one\n"
        fake.release.set()
        rest = await resp.read()
    assert rest == b"\ndata: two\n\ndata: [DONE]\n\n"
    assert fake.bodies == [body]  # forwarded byte for byte
    # Only what llama-server reads goes on (its own header limits never answer a client).
    assert "Authorization" not in fake.headers[0]
    assert fake.headers[0]["Content-Type"].startswith("application/json")


async def test_client_disconnect_cancels_upstream(proxy: Any, upstream: Any) -> None:
    fake, _ = upstream
    async with asyncio.timeout(10):
        resp = await proxy.post("/engines/v1/chat/completions", data=b'{"model": "ai/x"}')
        assert await resp.content.readline() == b"data: one\n"
        resp.close()
        await fake.cancelled.wait()


async def test_upstream_death_mid_stream_ends_with_an_error_event(
    proxy: Any, upstream: Any
) -> None:
    fake, _ = upstream
    async with asyncio.timeout(10):
        resp = await proxy.post("/engines/v1/chat/completions?die=1", data=b'{"model": "ai/x"}')
        assert resp.status == 200
        assert await resp.content.readline() == b"data: one\n"
        fake.release.set()
        text = (await resp.read()).decode()
    last = [line for line in text.splitlines() if line.startswith("data:")][-1]
    error = json.loads(last.removeprefix("data:"))["error"]
    assert error["code"] == "upstream_error"
    assert proxy.state.metrics.stream_errors == 1


async def test_json_answers_and_usage_are_counted(proxy: Any) -> None:
    resp = await proxy.post("/engines/v1/chat/completions?json=1", data=b'{"model": "ai/x"}')
    assert resp.status == 200
    assert (await resp.json())["usage"]["completion_tokens"] == 2
    tokens = proxy.state.metrics.tokens
    assert tokens[("ai/x", "prompt")] == 3
    assert tokens[("ai/x", "completion")] == 2


async def test_stream_usage_cut_across_chunks_is_counted(proxy: Any, upstream: Any) -> None:
    """The final event's timings arrive in two chunks (the client holds the first before the
    second is written): its tokens are still counted."""
    fake, _ = upstream
    async with asyncio.timeout(10):
        resp = await proxy.post("/engines/v1/chat/completions?split=1", data=b'{"model": "ai/x"}')
        seen = b""
        while not seen.endswith(b'"pred'):
            seen += await resp.content.readany()
        fake.release.set()
        await resp.read()
    tokens = proxy.state.metrics.tokens
    assert tokens[("ai/x", "prompt")] == 4
    assert tokens[("ai/x", "completion")] == 7


async def test_pooled_connections_of_a_runner_gone_keep_no_fds() -> None:
    """aiohttp's lane pools runner connections in the fast lane's pool: a runner that stops
    takes its idle connections with it (closed, fds freed, the socket's entry dropped)."""
    tmp = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    sock = tmp / "gone.sock"
    peers: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)

    server = await asyncio.start_unix_server(accept, str(sock))
    pool = UpstreamPool(connect_timeout_s=1, read_timeout_s=1)
    try:
        conn = await pool.runners.connect(sock)
        conn.reusable = True
        pool.runners.release(sock, conn)
        while not peers:
            await asyncio.sleep(0.01)
        server.close()
        for peer in peers:
            peer.close()
        for _ in range(100):
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        assert conn.closed
        assert pool.runners.take_idle(sock) is None
        assert sock not in pool.runners._idle
    finally:
        await pool.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_connections_the_runner_dropped_are_retried(aiohttp_client: Any) -> None:
    """llama-server closes a connection after a streamed answer while announcing keep-alive: a
    pooled connection can be dead when reused.  Here the upstream drops every connection at its
    second request, unanswered; every client request still gets its answer."""
    tmp = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    seen: dict[int, int] = {}
    dropped = 0

    async def one_per_connection(request: web.Request) -> web.Response:
        nonlocal dropped
        transport = request.transport
        assert transport is not None
        seen[id(transport)] = seen.get(id(transport), 0) + 1
        if seen[id(transport)] > 1:
            dropped += 1
            transport.abort()
        return web.json_response({"ok": True}, headers={"Keep-Alive": "timeout=5"})

    up = web.Application()
    up.router.add_post("/v1/completions", one_per_connection)
    runner = web.AppRunner(up)
    await runner.setup()
    sock = tmp / "up.sock"
    await web.UnixSite(runner, str(sock)).start()
    pool = UpstreamPool(connect_timeout_s=2, read_timeout_s=10)
    state = make_state(sock, pool)

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = "/v1/completions"
        return await serve(state, request, "sha256:x", "ai/x", "completion", path, body, None)  # type: ignore[arg-type]

    app = web.Application(middlewares=[make_error_middleware()])
    app.router.add_post("/v1/completions", handler)
    try:
        client = await aiohttp_client(app)
        for _ in range(10):
            resp = await client.post("/v1/completions", data=b'{"model": "ai/x"}')
            assert resp.status == 200, await resp.text()
        assert dropped >= 5  # the retry path really ran
    finally:
        await pool.close()
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
