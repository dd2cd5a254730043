#!/usr/bin/env python3
"""The floor for any relay written in Python on this event loop: a uvloop ``Protocol`` pair that
only copies bytes between a client's TCP connection and a runner's Unix socket (no parsing, no
bookkeeping).  ``bare_relay.py RUNNER_SOCKET PORT``; prints "ready" once listening on 127.0.0.1.
Used by scripts/bench_real_stream.py as the row the daemon's per-token cost is held against."""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Up(asyncio.Protocol):
    """The runner's side: its bytes go to the client as they come."""

    def __init__(self, down: asyncio.Transport) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        self.down.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.down.close()


class Down(asyncio.Protocol):
    """The client's side: one runner connection per client connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.up: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.opening: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.opening = asyncio.get_running_loop().create_task(self.open())

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.up, _ = await loop.create_unix_connection(lambda: Up(self.transport), self.path)
        for data in self.early:
            self.up.write(data)

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.early.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.up is not None:
            self.up.close()


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Down(sys.argv[1]), "127.0.0.1", int(sys.argv[2]))
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
