"""Hostile input: every bad request gets a 4xx with a JSON error, and the daemon keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from yarl import URL

from tests.reliability.conftest import Target, seed_models, start_daemon

BAD_REFERENCES = [
    "..",
    "../../etc/passwd",
    "ai/../../../etc/passwd",
    "/etc/passwd",
    "ai//smollm2",
    "ai/smollm2\x00evil",
    "a" * 5000,
    "AI/SmolLM2",
    "ai/smöllm2",
    "ai/😀",
    "ai/smollm2:" + "t" * 300,
    "ai/smollm2@sha256:" + "0" * 63,
    " ",
    "ai/smollm2@sha256:zz",
]

OPENAI_PATHS = [
    "/engines/llama.cpp/v1/chat/completions",
    "/engines/v1/completions",
    "/v1/embeddings",
]


def deep(n: int) -> str:
    return "[" * n + "]" * n


BAD_BODIES: list[tuple[str, bytes]] = [
    ("malformed", b"{"),
    ("not-json", b"hello"),
    ("trailing", b'{"model": "x"} garbage'),
    ("array", b"[1, 2]"),
    ("null", b"null"),
    ("number", b"12"),
    ("model-int", b'{"model": 12}'),
    ("model-null", b'{"model": null}'),
    ("model-list", b'{"model": ["a"]}'),
    ("model-obj", b'{"model": {"a": 1}}'),
    ("no-model", b'{"messages": []}'),
    ("empty-model", b'{"model": ""}'),
    ("deep", ('{"model": "x", "a": ' + deep(100_000) + "}").encode()),
    ("bad-utf8", b'{"model": "\xff\xfe"}'),
    ("nul", b'{"model": "a\\u0000b"}'),
]

MANAGEMENT_BODIES: list[tuple[str, str, bytes]] = [
    ("POST", "/models/create", b"{"),
    ("POST", "/models/create", b'{"from": 3}'),
    ("POST", "/models/create", b'{"from": ""}'),
    ("POST", "/models/create", b'{"from": "../../x"}'),
    ("POST", "/engines/unload", b'{"models": "notalist"}'),
    ("POST", "/engines/unload", b'{"all": "yes"}'),
    ("POST", "/engines/_configure", b'{"model": "ai/x", "context-size": "big"}'),
    ("POST", "/engines/_configure", b'{"model": "ai/x", "runtime-flags": "--x"}'),
    ("POST", "/engines/_configure", b'{"model": "ai/x", "runtime-flags": ["--rpc", "h:1"]}'),
    ("POST", "/engines/_configure", b"[]"),
]


@pytest.fixture
async def http(target: Target) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=target.base_url, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


async def assert_json_4xx(resp: aiohttp.ClientResponse, what: str) -> None:
    body = await resp.read()
    assert 400 <= resp.status < 500, f"{what}: {resp.status} {body[:300]!r}"
    try:
        payload = json.loads(body)
    except ValueError:
        pytest.fail(f"{what}: error body is not JSON: {body[:300]!r}")
    assert isinstance(payload, dict), f"{what}: {payload!r}"
    assert "error" in payload, f"{what}: {payload!r}"


async def assert_alive(http: aiohttp.ClientSession) -> None:
    async with http.get("/models") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("ref", BAD_REFERENCES, ids=range(len(BAD_REFERENCES)))
async def test_bad_model_reference_in_paths(
    target: Target, http: aiohttp.ClientSession, ref: str
) -> None:
    """A hostile reference in a path is a JSON 4xx, never a file outside the store.

    URLs are sent as written (``encoded=True``): the client would otherwise resolve
    ``/models/..`` to ``/`` before the daemon ever saw it."""
    quoted = quote(ref, safe="")
    for method, path in [
        ("GET", f"/models/{quoted}"),
        ("DELETE", f"/models/{quoted}"),
        ("POST", f"/models/{quoted}/tag?repo=x/y&tag=z"),
        ("POST", f"/models/{quoted}/push"),
        ("GET", f"/engines/v1/models/{quoted}"),
    ]:
        async with http.request(method, URL(target.base_url + path, encoded=True)) as resp:
            await assert_json_4xx(resp, f"{method} {ref!r}")
    await assert_alive(http)


@pytest.mark.parametrize("ref", BAD_REFERENCES, ids=range(len(BAD_REFERENCES)))
async def test_bad_model_reference_in_bodies(http: aiohttp.ClientSession, ref: str) -> None:
    """A hostile reference as `model` or `from` is a JSON 4xx."""
    for path in OPENAI_PATHS:
        async with http.post(path, json={"model": ref, "prompt": "x", "input": "x"}) as resp:
            await assert_json_4xx(resp, f"{path} {ref!r}")
    async with http.post("/models/create", json={"from": ref}) as resp:
        await assert_json_4xx(resp, f"create {ref!r}")
    await assert_alive(http)


@pytest.mark.parametrize(("label", "body"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_openai_bodies(http: aiohttp.ClientSession, label: str, body: bytes) -> None:
    """Malformed, deep or mistyped JSON on OpenAI routes is a 4xx with OpenAI's error shape."""
    for path in OPENAI_PATHS:
        headers = {"Content-Type": "application/json"}
        async with http.post(path, data=body, headers=headers) as resp:
            await assert_json_4xx(resp, f"{path} {label}")
    await assert_alive(http)


@pytest.mark.parametrize(("method", "path", "body"), MANAGEMENT_BODIES)
async def test_bad_management_bodies(
    http: aiohttp.ClientSession, method: str, path: str, body: bytes
) -> None:
    """Malformed or mistyped bodies on management routes are a JSON 4xx."""
    headers = {"Content-Type": "application/json"}
    async with http.request(method, path, data=body, headers=headers) as resp:
        await assert_json_4xx(resp, f"{path} {body!r}")
    await assert_alive(http)


async def test_body_over_the_limit_is_413(http: aiohttp.ClientSession) -> None:
    """A body over max_body_bytes (10 MiB by default) is 413, streamed in without being kept."""
    big = b'{"model": "ai/x", "prompt": "' + b"a" * (11 * 1024 * 1024) + b'"}'
    for path in ["/engines/v1/completions", "/models/create", "/engines/_configure"]:
        body = io.BytesIO(big)  # raw bytes this big make aiohttp warn (an error here)
        async with http.post(path, data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413, f"{path}: {resp.status}"
            await assert_json_4xx(resp, path)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "ai/x", "prompt": "'
        for _ in range(11):
            yield b"a" * (1024 * 1024)

    for path in ["/engines/v1/chat/completions", "/engines/unload"]:
        try:
            async with http.post(path, data=chunked()) as resp:
                assert resp.status == 413, f"{path} (chunked): {resp.status}"
                await assert_json_4xx(resp, f"{path} (chunked)")
        except aiohttp.ClientOSError:
            pass  # answered 413 and closed while we still sent: also a refusal
    await assert_alive(http)


async def test_huge_header_is_4xx(http: aiohttp.ClientSession) -> None:
    """An absurd header (1 MiB) is refused with a JSON 4xx; the daemon keeps answering."""
    try:
        async with http.get("/models", headers={"X-Big": "a" * (1024 * 1024)}) as resp:
            await assert_json_4xx(resp, "1 MiB header")
    except aiohttp.ClientError:
        pass  # the server may close the connection on a header it will not parse
    await assert_alive(http)


async def test_many_headers_is_4xx(http: aiohttp.ClientSession) -> None:
    """Thousands of headers are refused with a JSON 4xx; the daemon keeps answering."""
    headers = {f"X-H{i}": "v" for i in range(5000)}
    try:
        async with http.get("/models", headers=headers) as resp:
            await assert_json_4xx(resp, "5000 headers")
    except aiohttp.ClientError:
        pass
    await assert_alive(http)


async def test_slow_bodies_do_not_block_others(target: Target, http: aiohttp.ClientSession) -> None:
    """Slowloris clients trickling bodies hold no lock: others are served meanwhile, and the
    trickler is eventually answered or cut (bounded by this test's own timeout)."""
    parts = urlsplit(target.base_url)
    assert parts.hostname
    assert parts.port
    writers = []
    for _ in range(20):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(
            b"POST /engines/v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
        )
        await writer.drain()
        writers.append((reader, writer))
    try:
        for _ in range(10):
            await assert_alive(http)
            for _, writer in writers:
                writer.write(b" ")
                await writer.drain()
    finally:
        for _, writer in writers:
            writer.close()
            await writer.wait_closed()
    await assert_alive(http)


async def slow_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """Announce a 1 MB body and trickle it a byte every 0.2 s until the daemon answers; the
    status line and the body of that answer."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000\r\n\r\n{".encode()
    )

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(0.2)  # the slowloris pace, not a synchronisation
                writer.write(b" ")
                await writer.drain()

    dripping = asyncio.create_task(trickle())
    try:
        status = await reader.readline()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        return status, await reader.readexactly(length)
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_slow_body_gets_a_json_408(request: pytest.FixtureRequest) -> None:
    """A body still trickling in after server.body_timeout_s is answered 408 with a JSON error
    (OpenAI shape on OpenAI routes), so a slowloris holds nothing for long."""
    target = await start_daemon(request, server={"body_timeout_s": 1.0})
    parts = urlsplit(target.base_url)
    assert parts.hostname
    assert parts.port
    async with asyncio.timeout(30):
        answers = await asyncio.gather(
            slow_request(parts.hostname, parts.port, "/engines/v1/chat/completions"),
            slow_request(parts.hostname, parts.port, "/models/create"),
        )
    (oai_status, oai_body), (mgmt_status, mgmt_body) = answers
    assert b" 408 " in oai_status, (oai_status, oai_body)
    assert isinstance(json.loads(oai_body)["error"]["message"], str)
    assert b" 408 " in mgmt_status, (mgmt_status, mgmt_body)
    assert isinstance(json.loads(mgmt_body)["error"], str)


REAL_MODEL = "test/hostile"
USER = [{"role": "user", "content": "x"}]
TEXTLESS = {"type": "text"}  # a text part without its text
# Wrong types and values in the fields llama-server reads (the model exists and loads, so the
# request reaches it): each is a JSON 4xx, and the runner survives all of them.
BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("/engines/v1/chat/completions", {"messages": "hi"}),
    ("/engines/v1/chat/completions", {"messages": [1, 2]}),
    ("/engines/v1/chat/completions", {"messages": [{"role": "user"}]}),
    ("/engines/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}),
    ("/engines/v1/chat/completions", {"messages": USER, "max_tokens": -5}),
    ("/engines/v1/chat/completions", {"messages": USER, "max_tokens": "many"}),
    ("/engines/v1/chat/completions", {"messages": USER, "max_tokens": 10**20}),
    ("/engines/v1/chat/completions", {"messages": USER, "temperature": "hot"}),
    ("/engines/v1/chat/completions", {"messages": USER, "stream": "yes"}),
    ("/engines/v1/chat/completions", {"messages": USER, "n": 1000000}),
    ("/engines/v1/chat/completions", {"messages": USER, "grammar": "root ::= ("}),
    ("/engines/v1/chat/completions", {"messages": USER, "tools": "bad"}),
    ("/engines/v1/chat/completions", {"messages": USER, "tools": [5]}),
    ("/engines/v1/chat/completions", {"messages": USER, "tools": [{"type": "function"}]}),
    ("/engines/v1/chat/completions", {"messages": [{"role": "user", "content": [5]}]}),
    ("/engines/v1/chat/completions", {"messages": [{"role": "user", "content": [TEXTLESS]}]}),
    (
        "/engines/v1/chat/completions",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}],
                }
            ]
        },
    ),
    ("/engines/v1/completions", {"prompt": 5}),
    ("/engines/v1/completions", {"prompt": [[1e9]]}),
    ("/engines/v1/completions", {"prompt": [999999999]}),
    ("/engines/v1/completions", {"prompt": None}),
    ("/engines/v1/completions", {}),
    ("/engines/v1/embeddings", {"input": 5}),
    ("/engines/v1/embeddings", {"input": [999999999]}),
    ("/engines/v1/embeddings", {"input": [[-1]]}),
    ("/engines/v1/embeddings", {"input": None}),
    ("/engines/v1/embeddings", {"input": ["a", 5.5]}),
    ("/engines/v1/embeddings", {"content": 5}),
]


async def test_bad_fields_reaching_a_real_runner(
    target: Target, http: aiohttp.ClientSession, tiny_gguf_factory: Any
) -> None:
    """Bad field types/values for a model that exists: JSON 4xx each (never llama-server's 500
    for a client error), no runner crash, and good requests still answer."""
    await seed_models(target, {REAL_MODEL: tiny_gguf_factory(seed=13, name="hostile")})
    conf = {"model": REAL_MODEL, "mode": "embedding", "runtime-flags": ["--pooling", "mean"]}
    async with http.post("/engines/_configure", json=conf) as resp:
        assert resp.status == 202, await resp.text()
    try:
        for path, fields in BAD_FIELDS:
            async with http.post(path, json={"model": REAL_MODEL, **fields}) as resp:
                await assert_json_4xx(resp, f"{path} {fields!r}"[:200])
        async with http.get("/metrics") as resp:
            crashes = re.search(r"modelrunner_runner_crashes_total (\d+)", await resp.text())
        assert crashes is None or crashes.group(1) == "0", crashes
        good = {"model": REAL_MODEL, "messages": USER, "max_tokens": 1}
        async with http.post("/engines/v1/chat/completions", json=good) as resp:
            assert resp.status == 200, await resp.text()
    finally:  # the module's daemon lives on: its runners must not outlive this test
        async with http.post("/engines/unload", json={"all": True}) as resp:
            assert resp.status == 200


async def test_a_header_over_the_parser_limit_gets_a_json_400(target: Target) -> None:
    """A request aiohttp's parser refuses (a 9 KB header) is answered in JSON, not plain text."""
    host, _, port = target.base_url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = f"GET /models HTTP/1.1\r\nHost: localhost\r\nX-Big: {'a' * 9000}\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()  # the server closes after its error answer
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line.split()[1].startswith(b"4"), raw[:300]
    assert b"application/json" in headers.lower(), raw[:300]
    assert "error" in json.loads(body), body[:300]
