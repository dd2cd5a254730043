"""Docker's progress stream for pull/push/load: lines, escaping, and where errors go."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from modelrunner.distribution.model import ProgressEvent
from modelrunner.errors import ModelNotFound, RegistryError
from modelrunner.server.api.progress import ProgressStream, go_html_escape
from modelrunner.server.middleware import make_error_middleware

Op = Callable[[Callable[[Any], None]], Any]


def app_for(operation: Op) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await ProgressStream(request, "pull").run(
            operation, lambda _r: "Model pulled successfully"
        )

    app = web.Application(middlewares=[make_error_middleware()])
    app.router.add_post("/models/create", handler)
    return app


def event(current: int) -> ProgressEvent:
    return ProgressEvent(
        kind="progress",
        message=f"Downloaded: {current}",
        digest="sha256:" + "a" * 64,
        layer_size=100,
        layer_current=current,
        current=current,
        total=100,
    )


async def test_lines_then_success(aiohttp_client: Any) -> None:
    async def op(progress: Callable[[Any], None]) -> str:
        for n in (10, 100):
            progress(event(n))
            await asyncio.sleep(0)
        return "done"

    client = await aiohttp_client(app_for(op))
    resp = await client.post("/models/create", headers={"Accept": "application/json"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    lines = [json.loads(x) for x in (await resp.text()).splitlines()]
    assert [x["type"] for x in lines] == ["progress", "progress", "success"]
    assert lines[1] == {
        "type": "progress",
        "message": "Downloaded: 100",
        "total": 100,
        "layer": {"id": "sha256:" + "a" * 64, "size": 100, "current": 100},
        "mode": "pull",
    }
    assert lines[2]["message"] == "Model pulled successfully"


async def test_without_json_accept_lines_are_html_escaped(aiohttp_client: Any) -> None:
    """Docker's CLI sends no Accept and html-unescapes every line before parsing it."""

    async def op(progress: Callable[[Any], None]) -> str:
        progress(event(5))
        return "done"

    client = await aiohttp_client(app_for(op))
    resp = await client.post("/models/create")
    text = await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert '"' not in text
    assert "&#34;type&#34;" in text


async def test_failure_before_any_progress_keeps_its_status(aiohttp_client: Any) -> None:
    async def op(_progress: Callable[[Any], None]) -> str:
        raise ModelNotFound("ai/nope:latest", "ai/nope:latest: not found on registry")

    client = await aiohttp_client(app_for(op))
    resp = await client.post("/models/create", headers={"Accept": "application/json"})
    assert resp.status == 404
    assert (await resp.json()) == {"error": "ai/nope:latest: not found on registry"}


async def test_failure_mid_stream_is_an_error_line(aiohttp_client: Any) -> None:
    async def op(progress: Callable[[Any], None]) -> str:
        progress(event(10))
        await asyncio.sleep(0)
        raise RegistryError("connection reset by registry")

    client = await aiohttp_client(app_for(op))
    resp = await client.post("/models/create", headers={"Accept": "application/json"})
    assert resp.status == 200
    lines = [json.loads(x) for x in (await resp.text()).splitlines()]  # every line is JSON
    assert lines[-1]["type"] == "error"
    assert lines[-1]["message"] == "Error: connection reset by registry"


async def test_progress_from_a_worker_thread(aiohttp_client: Any) -> None:
    async def op(progress: Callable[[Any], None]) -> str:
        await asyncio.to_thread(progress, event(42))
        return "done"

    client = await aiohttp_client(app_for(op))
    resp = await client.post("/models/create", headers={"Accept": "application/json"})
    lines = [json.loads(x) for x in (await resp.text()).splitlines()]
    assert lines[0]["layer"]["current"] == 42


def test_go_escaping() -> None:
    assert go_html_escape("""<a href="x">'&'</a>""") == (
        "&lt;a href=&#34;x&#34;&gt;&#39;&amp;&#39;&lt;/a&gt;"
    )
