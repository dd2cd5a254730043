"""
Stored Responses-API answers on disk, ``<home>/responses/<id>.json``, one file each.

A record is ``{"response": {...}, "input_items": [...]}``: what ``GET /v1/responses/{id}`` and
``.../input_items`` answer, and what ``previous_response_id`` replays.  Files are written to a
temporary name, fsynced and renamed, so a crash never leaves half a record under its id.  At
start the directory is scanned (mtime = creation time) so records survive a daemon restart;
the bounds and the TTL (``responses_index``) decide what goes.  Every file operation runs in a
thread: nothing here blocks the event loop.  Knows nothing of HTTP or of the Responses shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from modelrunner.errors import StoreError
from modelrunner.server.api.responses.index import ResponseIndex, valid_id

log = structlog.get_logger(__name__)

SUFFIX = ".json"


class ResponseStore:
    def __init__(
        self,
        root: Path,
        *,
        max_count: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.index = ResponseIndex(max_count=max_count, max_bytes=max_bytes, ttl_s=ttl_s)
        self._clock = clock

    def _path(self, response_id: str) -> Path:
        return self.root / f"{response_id}{SUFFIX}"

    # --- in a thread -----------------------------------------------------------------------

    def _scan(self) -> list[tuple[str, float, int]]:
        self.root.mkdir(parents=True, exist_ok=True)
        found = []
        for path in self.root.iterdir():
            if path.name.endswith(".tmp"):  # a write a crash interrupted
                path.unlink(missing_ok=True)
                continue
            response_id = path.name.removesuffix(SUFFIX)
            if not path.name.endswith(SUFFIX) or not valid_id(response_id):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                found.append((response_id, st.st_mtime, st.st_size))
        return found

    def _write(self, response_id: str, data: bytes, created: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{response_id}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.utime(tmp, (created, created))
            os.replace(tmp, self._path(response_id))
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot store response {response_id}: {e}") from e

    def _read(self, response_id: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self._path(response_id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("responses.unreadable", id=response_id, error=repr(e))
            return None
        return value if isinstance(value, dict) else None

    def _unlink(self, ids: list[str]) -> None:
        for response_id in ids:
            with contextlib.suppress(OSError):
                self._path(response_id).unlink(missing_ok=True)

    # --- on the loop -----------------------------------------------------------------------

    async def open(self) -> None:
        """Index what an earlier daemon stored; drop what is expired or over the bounds."""
        found = await asyncio.to_thread(self._scan)
        drop: list[str] = []
        for response_id, created, size in sorted(found, key=lambda f: f[1]):
            drop += self.index.add(response_id, created, size)
        drop += self._take_expired()
        if drop:
            await asyncio.to_thread(self._unlink, drop)
        log.info("responses.opened", count=len(self.index), bytes=self.index.bytes)

    def _take_expired(self) -> list[str]:
        expired = self.index.expired(self._clock())
        for response_id in expired:
            self.index.remove(response_id)
        return expired

    async def save(self, response_id: str, record: dict[str, Any]) -> bool:
        """Store *record*; False (and nothing stored) when it alone is over ``max_bytes``."""
        data = json.dumps(record, separators=(",", ":")).encode()
        if not self.index.fits(len(data)):
            log.warning("responses.too_large", id=response_id, bytes=len(data))
            return False
        created = self._clock()
        await asyncio.to_thread(self._write, response_id, data, created)
        drop = self.index.add(response_id, created, len(data)) + self._take_expired()
        if drop:
            await asyncio.to_thread(self._unlink, drop)
        return True

    async def get(self, response_id: str) -> dict[str, Any] | None:
        """The record, or None when unknown, deleted, expired or evicted."""
        if not valid_id(response_id) or response_id not in self.index:
            return None
        if not self.index.live(response_id, self._clock()):
            self.index.remove(response_id)
            await asyncio.to_thread(self._unlink, [response_id])
            return None
        return await asyncio.to_thread(self._read, response_id)

    async def delete(self, response_id: str) -> bool:
        if not valid_id(response_id) or not self.index.live(response_id, self._clock()):
            return False
        self.index.remove(response_id)  # first: a concurrent get already finds nothing
        await asyncio.to_thread(self._unlink, [response_id])
        return True
