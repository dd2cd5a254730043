"""A tiny fault-injecting HTTP proxy to put in front of the real docker-registry.

The registry's own failures (stopped, 500s, stalls, cut bodies) are hard to provoke on cue, so
tests point the store at this proxy and switch its mode while a pull runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


class Mode(enum.Enum):
    PASS = "pass"  # forward faithfully
    ERROR_500 = "500"  # answer every request with 500
    STALL = "stall"  # accept, then say nothing until released or `stall_s` passes
    CUT_BODY = "cut"  # forward headers and the first `cut_after` bytes, then drop the connection
    REFUSE = "refuse"  # close the connection without an answer
    HOLD = "hold"  # forward headers and the first `cut_after` bytes, then wait until released


@dataclass
class FaultyProxy:
    """Forward to `upstream`, misbehaving as `mode` says; counts what it did."""

    upstream: str
    mode: Mode = Mode.PASS
    stall_s: float = 30.0
    cut_after: int = 64 * 1024
    only_blobs: bool = False  # faults hit only /v2/*/blobs/* (manifests pass)
    requests: int = 0
    faults: int = 0
    blob_ranges: list[str] = field(default_factory=list)  # Range header of each blob GET ("")
    held: asyncio.Event = field(default_factory=asyncio.Event)  # HOLD reached its cut point
    released: asyncio.Event = field(default_factory=asyncio.Event)
    first_blob: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=1024**4)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _faulty(self, request: web.Request) -> bool:
        if self.mode is Mode.PASS:
            return False
        return not self.only_blobs or "/blobs/" in request.path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if "/blobs/" in request.path:
            self.first_blob.set()
            if request.method == "GET":
                self.blob_ranges.append(request.headers.get("Range", ""))
        mode = self.mode if self._faulty(request) else Mode.PASS
        if mode is not Mode.PASS:
            self.faults += 1
        if mode is Mode.ERROR_500:
            return web.json_response({"errors": [{"code": "UNKNOWN"}]}, status=500)
        if mode is Mode.REFUSE:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if mode is Mode.STALL:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), self.stall_s)
            return web.json_response({"errors": [{"code": "UNAVAILABLE"}]}, status=503)
        return await self._forward(request, cut=mode is Mode.CUT_BODY, hold=mode is Mode.HOLD)

    async def _forward(
        self, request: web.Request, *, cut: bool, hold: bool = False
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read() if request.body_exists else None
        async with self._session.request(
            request.method,
            self.upstream + request.rel_url.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            out = web.StreamResponse(status=upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() in HOP_BY_HOP:
                    continue
                if k.lower() == "location" and v.startswith(self.upstream):
                    v = self.url + v[len(self.upstream) :]
                out.headers[k] = v
            if upstream.content_length is not None and not cut:
                out.content_length = upstream.content_length
            await out.prepare(request)
            sent = 0
            async for chunk in upstream.content.iter_any():
                if (cut or hold) and sent + len(chunk) > self.cut_after:
                    await out.write(chunk[: self.cut_after - sent])
                    if hold:
                        self.held.set()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.released.wait(), self.stall_s)
                    assert request.transport is not None
                    request.transport.abort()
                    return out
                await out.write(chunk)
                sent += len(chunk)
            await out.write_eof()
            return out
