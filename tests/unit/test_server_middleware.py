"""Error rendering, body limits, JSON parsing and CORS of the daemon's middleware (in-process)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from modelrunner.errors import InvalidRequest, ModelNotFound, TooManyRequests
from modelrunner.server.middleware import (
    add_cors_headers,
    is_openai_path,
    make_cors_middleware,
    make_error_middleware,
    parse_json_object,
    read_body,
)

SEEN = web.AppKey("seen", list[tuple[str, int]])


def build(origins: tuple[str, ...] = ()) -> web.Application:
    seen: list[tuple[str, int]] = []
    app = web.Application(
        middlewares=[
            make_error_middleware(lambda r, s, _t: seen.append((r.path, s))),
            make_cors_middleware(origins),
        ]
    )
    app.on_response_prepare.append(add_cors_headers)
    app[SEEN] = seen

    async def missing(_: web.Request) -> web.Response:
        raise ModelNotFound("ai/x:latest")

    async def busy(_: web.Request) -> web.Response:
        raise TooManyRequests("busy", retry_after_s=3)

    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    async def echo(request: web.Request) -> web.Response:
        body = await read_body(request, 64)
        return web.json_response(parse_json_object(body))

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        return resp

    for prefix in ("/models", "/engines/v1"):
        app.router.add_get(prefix + "/missing", missing)
        app.router.add_get(prefix + "/busy", busy)
        app.router.add_get(prefix + "/boom", boom)
        app.router.add_post(prefix + "/echo", echo)
    app.router.add_post("/v1/chat/completions", echo)
    app.router.add_get("/stream", stream)
    return app


async def test_management_errors_are_plain_json(aiohttp_client: Any) -> None:
    client = await aiohttp_client(build())
    resp = await client.get("/models/missing")
    assert resp.status == 404
    body = await resp.json()
    assert "modelrunner pull ai/x:latest" in body["error"]


async def test_openai_errors_have_openai_shape(aiohttp_client: Any) -> None:
    client = await aiohttp_client(build())
    resp = await client.get("/engines/v1/missing")
    assert resp.status == 404
    err = (await resp.json())["error"]
    assert err["code"] == "model_not_found"
    assert err["type"] == "not_found_error"
    assert "pull" in err["message"]


async def test_rate_limit_sets_retry_after(aiohttp_client: Any) -> None:
    client = await aiohttp_client(build())
    resp = await client.get("/models/busy")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"


async def test_unexpected_errors_are_a_500_without_internals(aiohttp_client: Any) -> None:
    client = await aiohttp_client(build())
    resp = await client.get("/models/boom")
    assert resp.status == 500
    text = await resp.text()
    assert "secret" not in text
    assert "request id" in (await resp.json())["error"]


async def test_router_404_and_405_are_json(aiohttp_client: Any) -> None:
    client = await aiohttp_client(build())
    resp = await client.get("/nowhere")
    assert resp.status == 404
    assert "error" in await resp.json()
    resp = await client.delete("/models/missing")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert "error" in await resp.json()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b"[1]", 400),
        (b"null", 400),
        (b"", 400),
        (b'{"a": "\xff"}', 400),
        (("[" * 5000 + "]" * 5000).encode(), 413),
        (b'{"model": "x"}', 200),
    ],
)
async def test_bodies(aiohttp_client: Any, body: bytes, status: int) -> None:
    client = await aiohttp_client(build())
    resp = await client.post("/v1/chat/completions", data=body)
    assert resp.status == status
    payload = await resp.json()
    if status != 200:
        assert isinstance(payload["error"]["message"], str)


def test_deep_json_is_a_400_not_a_recursion_crash() -> None:
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        parse_json_object(("[" * 100_000 + "]" * 100_000).encode())


async def test_body_over_limit_without_content_length(aiohttp_client: Any) -> None:
    """A chunked body is counted as it streams in; over the limit is 413 JSON."""
    client = await aiohttp_client(build())

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 16

    resp = await client.post("/models/echo", data=chunks())
    assert resp.status == 413
    assert "limit" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("path", "openai"),
    [
        ("/engines/llama.cpp/v1/chat/completions", True),
        ("/v1/models/ai/x", True),
        ("/rerank", True),
        ("/engines/score", True),
        ("/models/ai/x", False),
        ("/engines/_configure", False),
    ],
)
def test_error_family(path: str, openai: bool) -> None:
    assert is_openai_path(path) is openai


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("http://localhost", True),
        ("https://app.example", True),
        ("http://localhost.evil.example", False),
        ("http://evil.example", False),
        ("null", False),
    ],
)
async def test_cors(aiohttp_client: Any, origin: str, allowed: bool) -> None:
    """Only configured origins, with real port wildcards (Docker's `:*` entries are literal)."""
    app = build(origins=("http://localhost:*", "https://app.example"))
    client = await aiohttp_client(app)
    pre = await client.options(
        "/v1/chat/completions",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    get = await client.get("/stream", headers={"Origin": origin})
    if allowed:
        assert pre.status == 204
        assert pre.headers["Access-Control-Allow-Origin"] == origin
        assert get.headers["Access-Control-Allow-Origin"] == origin  # streamed answers too
    else:
        assert pre.status == 403
        assert "Access-Control-Allow-Origin" not in pre.headers
        assert "Access-Control-Allow-Origin" not in get.headers


async def test_no_origin_no_cors_headers(aiohttp_client: Any) -> None:
    client = await aiohttp_client(build(origins=("*",)))
    resp = await client.get("/stream")
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_every_request_is_observed(aiohttp_client: Any) -> None:
    app = build()
    client = await aiohttp_client(app)
    await client.get("/models/missing")
    await client.get("/nowhere")
    assert app[SEEN] == [("/models/missing", 404), ("/nowhere", 404)]
