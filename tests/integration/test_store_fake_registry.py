"""Registry behaviours docker-registry never shows, from a small aiohttp fake: Range ignored,
a blob longer than its descriptor, a manifest that is an image."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from modelrunner.config import StoreConfig
from modelrunner.distribution import Store, UnsupportedModel
from modelrunner.distribution import mediatypes as mt
from modelrunner.errors import DigestMismatch


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def make_registry(layer: bytes, *, served: bytes | None = None, config_type: str = mt.CONFIG_V01):
    """Serves ai/x:v1 with one GGUF layer; *served* replaces the layer's bytes on the wire."""
    config = json.dumps({"config": {"format": "gguf"}}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": config_type, "size": len(config), "digest": sha(config)},
            "layers": [{"mediaType": mt.GGUF, "size": len(layer), "digest": sha(layer)}],
        }
    ).encode()
    blobs = {sha(config): config, sha(layer): layer if served is None else served}
    ranges: list[str | None] = []

    async def get_manifest(request: web.Request) -> web.Response:
        return web.Response(
            body=manifest,
            content_type=mt.OCI_MANIFEST,
            headers={"Docker-Content-Digest": sha(manifest)},
        )

    async def get_blob(request: web.Request) -> web.Response:
        ranges.append(request.headers.get("Range"))
        body = blobs.get(request.match_info["digest"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="application/octet-stream")  # no Range

    app = web.Application()
    app.router.add_get("/v2/ai/x/manifests/{ref}", get_manifest)
    app.router.add_get("/v2/ai/x/blobs/{digest}", get_blob)
    return app, ranges


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(StoreConfig(path=tmp_path / "s", docker_config=tmp_path / "none.json"))
    await s.open()
    yield s
    await s.close()


async def test_a_registry_that_ignores_range_restarts_the_layer(aiohttp_server, store, tiny_gguf):
    layer = tiny_gguf.read_bytes()
    app, ranges = make_registry(layer)
    server = await aiohttp_server(app)
    store.layout.incomplete(sha(layer)).write_bytes(b"garbage prefix from a bad resume")
    with capture_logs() as logs:
        model = await store.pull(f"127.0.0.1:{server.port}/ai/x:v1")
    assert model.gguf_paths[0].read_bytes() == layer
    assert f"bytes={len(b'garbage prefix from a bad resume')}-" in ranges
    assert [e["offset"] for e in logs if e["event"] == "store.resume"] == [32]


async def test_a_blob_longer_than_its_descriptor_is_cut_off(aiohttp_server, store, tiny_gguf):
    layer = tiny_gguf.read_bytes()
    app, _ = make_registry(layer, served=layer + b"trailing junk")
    server = await aiohttp_server(app)
    with pytest.raises(DigestMismatch):
        await store.pull(f"127.0.0.1:{server.port}/ai/x:v1")
    assert await store.list_models() == []
    assert not store.layout.incomplete(sha(layer)).exists()


async def test_an_image_is_not_a_model(aiohttp_server, store, tiny_gguf):
    app, _ = make_registry(
        tiny_gguf.read_bytes(), config_type="application/vnd.oci.image.config.v1+json"
    )
    server = await aiohttp_server(app)
    with pytest.raises(UnsupportedModel, match="try upgrading"):
        await store.pull(f"127.0.0.1:{server.port}/ai/x:v1")
    assert list(store.layout.blobs_dir.iterdir()) == []
