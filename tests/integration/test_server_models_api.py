"""``GET /models/{name}`` in process, on a real store: a model the store lists but that has no
GGUF layer (another tool's safetensors artifact) is shown, not a 500."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelrunner.config import Config
from modelrunner.distribution import mediatypes as mt
from modelrunner.distribution.artifact import parse_manifest
from modelrunner.distribution.digest import sha256_digest
from modelrunner.distribution.layout import atomic_write
from modelrunner.distribution.store import Store
from modelrunner.runners.supervisor import Supervisor
from modelrunner.server.app import make_app


@pytest.fixture
async def home() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_model_without_a_gguf_layer_is_shown(aiohttp_client: Any, home: Path) -> None:
    config = await asyncio.to_thread(Config.load, None, {"MODEL_RUNNER_HOME": str(home)})
    store = Store(config.store)
    await store.open()
    try:
        cfg = json.dumps({"config": {"format": "safetensors"}}).encode()
        weights = b"not a gguf"
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": {
                    "mediaType": mt.CONFIG_V01,
                    "size": len(cfg),
                    "digest": sha256_digest(cfg),
                },
                "layers": [
                    {
                        "mediaType": mt.SAFETENSORS,
                        "size": len(weights),
                        "digest": sha256_digest(weights),
                    }
                ],
            }
        ).encode()
        for blob in (cfg, weights):
            await asyncio.to_thread(atomic_write, store.layout.blob(sha256_digest(blob)), blob)
        await store.commit(manifest, parse_manifest(manifest), "ai/st:latest")
        supervisor = Supervisor(config.runners, lambda _id: None)  # type: ignore[arg-type,return-value]
        client = await aiohttp_client(make_app(config, store, supervisor))
        resp = await client.get("/models/ai/st")
        body = await resp.json()
        assert resp.status == 200, body
        assert body["tags"] == ["ai/st:latest"]
        assert body["llama_server_args"] == {}
    finally:
        await store.close()


async def test_a_tar_upload_that_stalls_is_timed_out(aiohttp_client: Any, home: Path) -> None:
    """``POST /models/load`` streams its body, so read_body's limit does not cover it; a client
    that stops sending mid-tar still gets a 408 after server.body_timeout_s, not a handler held
    (with its temp blob file) for ever."""
    config = await asyncio.to_thread(Config.load, None, {"MODEL_RUNNER_HOME": str(home)})
    config = Config.from_mapping({"server": {"body_timeout_s": 0.2}}, base=config)
    store = Store(config.store)
    await store.open()
    never = asyncio.Event()

    async def stalled_tar() -> AsyncIterator[bytes]:
        yield b"\0" * 100  # less than one tar header, then nothing
        await never.wait()

    try:
        supervisor = Supervisor(config.runners, lambda _id: None)  # type: ignore[arg-type,return-value]
        client = await aiohttp_client(make_app(config, store, supervisor))
        async with asyncio.timeout(30):
            resp = await client.post(
                "/models/load",
                data=stalled_tar(),
                headers={"Content-Type": "application/x-tar"},
            )
            text = await resp.text()
        assert resp.status == 408, text
        assert "body_timeout_s" in text
    finally:
        never.set()
        await store.close()


async def test_df_follows_a_symlinked_llama_server_off_the_loop(
    aiohttp_client: Any, home: Path, llama_server_bin: Path
) -> None:
    """``/engines/df`` sizes the real directory of a llama-server reached through a symlink (as
    a package manager installs it); resolving the link is file I/O, kept off the event loop."""
    link = home / "bin" / "llama-server"
    await asyncio.to_thread(link.parent.mkdir)
    await asyncio.to_thread(link.symlink_to, llama_server_bin)
    config = await asyncio.to_thread(Config.load, None, {"MODEL_RUNNER_HOME": str(home)})
    config = Config.from_mapping({"runners": {"llama_server_path": str(link)}}, base=config)
    store = Store(config.store)
    await store.open()
    try:
        supervisor = Supervisor(config.runners, lambda _id: None)  # type: ignore[arg-type,return-value]
        client = await aiohttp_client(make_app(config, store, supervisor))
        resp = await client.get("/engines/df")
        body = await resp.json()
        assert resp.status == 200, body
        assert body["default_backend_disk_usage"] > 0
    finally:
        await store.close()
