"""A blob upload whose chunk source is still finishing when the registry answers.

The store's push reads ahead and checks the blob's digest after its last chunk; the registry can
answer 201 before aiohttp's body writer has left that generator. Closing it then raised
"aclose(): asynchronous generator is already running" and failed the push (seen under load in
test_faults' publish). The slow last step is made deterministic here.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelrunner.config import StoreConfig
from modelrunner.distribution.registry import RegistryClient

pytestmark = pytest.mark.registry


async def test_upload_while_the_source_finishes_its_last_step(
    registry: Any, tmp_path: Path
) -> None:
    blob = b"x" * (256 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    async def source() -> AsyncIterator[bytes]:
        yield blob
        await asyncio.sleep(0.3)  # a slow final step (digest check), after every byte was sent

    chunks = source()
    config = StoreConfig(path=tmp_path / "store", docker_config=tmp_path / "none.json")
    async with RegistryClient(config) as client:
        await client.upload_blob(registry.host, "race/blob", digest, len(blob), chunks)
        assert await client.blob_exists(registry.host, "race/blob", digest)
    assert chunks.ag_frame is None  # closed, and upload_blob did not fail closing it  # type: ignore[attr-defined]
