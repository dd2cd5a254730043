"""Issue 16.4: SIGTERM's drain, seen by clients: a request that arrives while the daemon drains
gets a JSON 503 with Retry-After (the listeners stay open until the drain ends), and a stream the
drain bound cuts ends with an SSE error event saying the daemon is stopping, not a bare close."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_daemon import curl
from tests.integration.test_daemon_lifecycle import LONG, MODEL, wait_for_log

pytestmark = pytest.mark.llama


@pytest.fixture
def drain_3s(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf_factory: Callable[..., Path]
) -> DaemonHandle:
    """A drain bound (3 s) far below the answer's length (8000 tokens: seconds on this box)."""
    d = daemon_factory(server={"drain_timeout_s": 3.0})
    d.add_model(MODEL, tiny_gguf_factory(ctx=8192))
    assert curl(d, "POST", "/engines/_configure", {"model": MODEL, "context-size": 8192})[0] == 202
    return d


async def test_drain_answers_503_then_cuts_the_stream_with_an_error_event(
    drain_3s: DaemonHandle,
) -> None:
    d = drain_3s
    async with aiohttp.ClientSession(base_url=d.base_url) as http:
        resp = await http.post("/engines/v1/chat/completions", json={**LONG, "max_tokens": 8000})
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"data: ")
        os.kill(d.pid, signal.SIGTERM)
        await asyncio.to_thread(wait_for_log, d, "daemon.draining")

        # A new connection during the drain: answered, in the route's own error shape.
        async with aiohttp.ClientSession(base_url=d.base_url) as other:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
            async with other.post("/engines/v1/completions", json=body) as late:
                assert late.status == 503
                assert int(late.headers["Retry-After"]) >= 1
                error = (await late.json())["error"]
                assert "stopping" in error["message"]
            async with other.get("/models") as manage:
                assert manage.status == 503
                assert "stopping" in (await manage.json())["error"]

        text = (await resp.read()).decode()
        resp.close()
    events = [x for x in text.splitlines() if x.startswith("data:")]
    assert events[-1] != "data: [DONE]"  # cut at the bound, not finished
    last = json.loads(events[-1].removeprefix("data:"))
    assert "stopping" in last["error"]["message"]
    assert await asyncio.to_thread(d.stop) == 0
    assert "daemon.stopped" in d.log_text()
