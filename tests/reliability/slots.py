"""Read llama-server's `/slots` over a runner's Unix socket: is any slot still generating?"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp


async def slots(socket_path: Path) -> list[dict[str, Any]]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://localhost/slots") as resp,
    ):
        resp.raise_for_status()
        body: list[dict[str, Any]] = await resp.json()
        return body


async def wait_all_idle(socket_path: Path, timeout_s: float = 10.0) -> None:
    """Deadline-bounded poll (llama-server offers no event): every slot stops processing."""
    async with asyncio.timeout(timeout_s):
        while any(s.get("is_processing") for s in await slots(socket_path)):
            await asyncio.sleep(0.02)


async def wait_any_busy(socket_path: Path, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not any(s.get("is_processing") for s in await slots(socket_path)):
            await asyncio.sleep(0.01)
