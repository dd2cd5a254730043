"""The slice of llama-server's slot API the prompt cache uses, over the runner's socket.

``GET /slots`` and ``POST /slots/{id}?action=save|restore``; an answer that is not 200 with the
expected JSON is a ``SaveFailed`` naming the call.  Knows nothing of files or of when to call.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp

from modelrunner.runners.kvfiles import SaveFailed

if TYPE_CHECKING:
    from modelrunner.runners.runner import Runner


@contextlib.asynccontextmanager
async def session(runner: Runner) -> AsyncIterator[aiohttp.ClientSession]:
    """A session on the runner's socket; the callers bound it with their own timeouts."""
    connector = aiohttp.UnixConnector(path=str(runner.socket_path))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        yield s


async def get_list(s: aiohttp.ClientSession, path: str) -> list[Any]:
    async with s.get(f"http://runner{path}") as response:
        body = await response.json(content_type=None)
        if response.status != 200 or not isinstance(body, list):
            raise SaveFailed(f"GET {path}: HTTP {response.status}")
        return body


async def post(s: aiohttp.ClientSession, path: str, payload: Any) -> dict[str, Any]:
    async with s.post(f"http://runner{path}", json=payload) as response:
        body = await response.json(content_type=None)
        if response.status != 200 or not isinstance(body, dict):
            message = body.get("error", {}).get("message") if isinstance(body, dict) else None
            raise SaveFailed(f"POST {path}: HTTP {response.status}: {message or body!r}")
        return body
