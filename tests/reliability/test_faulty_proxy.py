"""The fault proxy itself: it forwards faithfully and misbehaves on cue (no registry needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.reliability.faulty_proxy import FaultyProxy, Mode

PAYLOAD = bytes(range(256)) * 1024


@pytest.fixture
async def proxy() -> AsyncIterator[FaultyProxy]:
    async def blob(_: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD)

    app = web.Application()
    app.router.add_get("/v2/a/blobs/x", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    p = FaultyProxy(upstream=f"http://127.0.0.1:{port}", stall_s=0.2, cut_after=1000)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()
        await runner.cleanup()


async def fetch(p: FaultyProxy) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(p.url + "/v2/a/blobs/x") as r,
    ):
        return r.status, await r.read()


async def test_passes_through(proxy: FaultyProxy) -> None:
    """In PASS mode the bytes arrive unchanged."""
    assert await fetch(proxy) == (200, PAYLOAD)


async def test_500_and_stall(proxy: FaultyProxy) -> None:
    """ERROR_500 answers 500; STALL answers 503 only after the bounded stall."""
    proxy.mode = Mode.ERROR_500
    assert (await fetch(proxy))[0] == 500
    proxy.mode = Mode.STALL
    assert (await fetch(proxy))[0] == 503
    assert proxy.faults == 2


async def test_cut_body(proxy: FaultyProxy) -> None:
    """CUT_BODY drops the connection part way through the body."""
    proxy.mode = Mode.CUT_BODY
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(proxy)
