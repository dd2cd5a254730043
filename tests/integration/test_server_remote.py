"""``GET /models/{name}?remote`` against a small aiohttp fake registry: a manifest the registry
mangles is a RegistryError (502 with a message), never a foreign exception (a 500)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from modelrunner.config import StoreConfig
from modelrunner.distribution import mediatypes as mt
from modelrunner.errors import RegistryError
from modelrunner.server.api.remote import remote_model


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def registry(manifest: bytes) -> web.Application:
    async def get_manifest(_: web.Request) -> web.Response:
        return web.Response(
            body=manifest,
            content_type=mt.OCI_MANIFEST,
            headers={"Docker-Content-Digest": sha(manifest)},
        )

    app = web.Application()
    app.router.add_get("/v2/ai/x/manifests/{ref}", get_manifest)
    return app


CONFIG = {"mediaType": mt.CONFIG_V01, "digest": sha(b"{}")}


@pytest.mark.parametrize(
    "manifest",
    [
        b"this is not JSON",
        json.dumps({"schemaVersion": 2, "config": {**CONFIG, "size": "big"}}).encode(),
        json.dumps({"schemaVersion": 2, "config": {**CONFIG, "size": [1]}}).encode(),
    ],
    ids=["not-json", "size-not-a-number", "size-a-list"],
)
async def test_a_mangled_remote_manifest_is_a_registry_error(
    aiohttp_server: Any, tmp_path: Path, manifest: bytes
) -> None:
    server = await aiohttp_server(registry(manifest))
    config = StoreConfig(path=tmp_path / "s", docker_config=tmp_path / "none.json")
    with pytest.raises(RegistryError, match="manifest"):
        await remote_model(config, f"127.0.0.1:{server.port}/ai/x:v1")
