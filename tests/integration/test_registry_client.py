"""The registry client against real docker-registry processes (plain, htpasswd, bearer token)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from modelrunner.config import StoreConfig
from modelrunner.distribution.registry import MEDIA_OCI_MANIFEST, RegistryClient
from modelrunner.errors import (
    DigestMismatch,
    ModelNotFound,
    RegistryAuthError,
    RegistryError,
)
from tests.fixtures.registry import oras_pull, oras_push

pytestmark = pytest.mark.registry

CONFIG_MEDIA = "application/vnd.docker.ai.model.config.v0.1+json"
GGUF_MEDIA = "application/vnd.docker.ai.gguf.v3"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def chunks_of(data: bytes, size: int = 1 << 16) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def manifest_for(config: bytes, layers: list[bytes]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": CONFIG_MEDIA, "size": len(config), "digest": sha(config)},
        "layers": [{"mediaType": GGUF_MEDIA, "size": len(b), "digest": sha(b)} for b in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def docker_config(tmp_path: Path, host: str | None, user: str = "", password: str = "") -> Path:
    path = tmp_path / "docker-config.json"
    auths = {}
    if host:
        auths[host] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    path.write_text(json.dumps({"auths": auths}))
    return path


@pytest.fixture
def make_client(tmp_path: Path) -> Callable[..., RegistryClient]:
    """Clients with a private docker config (none by default: anonymous)."""

    def make(config_path: Path | None = None, **kw: object) -> RegistryClient:
        return RegistryClient(
            StoreConfig(
                path=tmp_path / "store",
                docker_config=config_path or tmp_path / "no-docker-config.json",
                **{"registry_timeout_s": 10, **kw},  # type: ignore[arg-type]
            )
        )

    return make


async def push_artifact(
    client: RegistryClient, host: str, repo: str, tag: str, layers: list[bytes]
) -> tuple[bytes, str]:
    config = json.dumps({"config": {"format": "gguf"}}).encode()
    for blob in [config, *layers]:
        await client.upload_blob(host, repo, sha(blob), len(blob), chunks_of(blob))
    raw = manifest_for(config, layers)
    digest = await client.put_manifest(host, repo, tag, raw, MEDIA_OCI_MANIFEST)
    return raw, digest


async def read_blob(
    client: RegistryClient, host: str, repo: str, digest: str, offset: int = 0
) -> tuple[int, int | None, bytes]:
    async with client.get_blob(host, repo, digest, offset=offset) as stream:
        data = b"".join([c async for c in stream.chunks])
        return stream.offset, stream.total, data


class TestRoundTrip:
    async def test_manifest_and_blobs_come_back_byte_for_byte(self, registry, make_client):
        """Push blobs and the exact manifest bytes; the digest is ours and everything reads back."""
        layer = os.urandom(300_000)
        async with make_client() as client:
            raw, digest = await push_artifact(client, registry.host, "ai/round", "v1", [layer])
            assert digest == sha(raw)
            got = await client.get_manifest(registry.host, "ai/round", "v1")
            assert (got.raw, got.digest, got.media_type) == (raw, digest, MEDIA_OCI_MANIFEST)
            by_digest = await client.get_manifest(registry.host, "ai/round", digest)
            assert by_digest.raw == raw
            assert await client.head_manifest(registry.host, "ai/round", "v1") == digest
            assert await client.head_manifest(registry.host, "ai/round", "nope") is None
            assert await client.blob_exists(registry.host, "ai/round", sha(layer))
            assert not await client.blob_exists(registry.host, "ai/round", sha(b"absent"))
            offset, total, data = await read_blob(client, registry.host, "ai/round", sha(layer))
            assert (offset, total, data) == (0, len(layer), layer)

    async def test_range_resume_starts_at_the_offset(self, registry, make_client):
        """A resumed download gets exactly the tail, and the total size of the blob."""
        layer = os.urandom(200_000)
        async with make_client() as client:
            await push_artifact(client, registry.host, "ai/resume", "v1", [layer])
            offset, total, data = await read_blob(
                client, registry.host, "ai/resume", sha(layer), offset=123_456
            )
            assert (offset, total) == (123_456, len(layer))
            assert data == layer[123_456:]

    async def test_range_past_the_end_restarts_from_zero(self, registry, make_client):
        """An offset the registry cannot satisfy (416) is reported as a restart from 0."""
        layer = os.urandom(50_000)
        async with make_client() as client:
            await push_artifact(client, registry.host, "ai/resume416", "v1", [layer])
            offset, _, data = await read_blob(
                client, registry.host, "ai/resume416", sha(layer), offset=len(layer) + 10
            )
            assert (offset, data) == (0, layer)

    async def test_upload_of_an_existing_blob_is_skipped(self, registry, make_client):
        """HEAD says the blob is there: the chunks are never read."""
        layer = os.urandom(10_000)
        read = []

        async def tracked() -> AsyncIterator[bytes]:
            read.append(True)
            yield layer

        async with make_client() as client:
            await push_artifact(client, registry.host, "ai/skip", "v1", [layer])
            await client.upload_blob(registry.host, "ai/skip", sha(layer), len(layer), tracked())
        assert read == []

    async def test_large_upload_streams_without_holding_the_blob(self, registry, make_client):
        """64 MiB pushed from a generator: Python allocations stay a few MiB."""
        block = os.urandom(1 << 20)
        n = 64
        digest = sha(block * n)  # computed once up front; the upload never sees it whole

        async def gen() -> AsyncIterator[bytes]:
            for _ in range(n):
                yield block

        tracemalloc.start()
        try:
            async with make_client() as client:
                await client.upload_blob(registry.host, "ai/big", digest, n << 20, gen())
                peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, f"upload peaked at {peak >> 20} MiB of Python allocations"
        async with make_client() as client:
            assert await client.blob_exists(registry.host, "ai/big", digest)


class TestErrors:
    async def test_missing_tag_is_model_not_found(self, registry, make_client):
        """An unknown tag of a known repository names the reference and the registry."""
        async with make_client() as client:
            await push_artifact(client, registry.host, "ai/known", "v1", [b"x" * 100])
            with pytest.raises(ModelNotFound) as e:
                await client.get_manifest(registry.host, "ai/known", "nope")
        msg = e.value.message
        assert f"{registry.host}/ai/known:nope" in msg
        assert "not found in the registry" in msg

    async def test_missing_repository_is_model_not_found(self, registry, make_client):
        async with make_client() as client:
            with pytest.raises(ModelNotFound, match="ai/never-pushed:latest was not found"):
                await client.get_manifest(registry.host, "ai/never-pushed", "latest")

    async def test_wrong_digest_on_upload_is_refused(self, registry, make_client):
        """The registry's DIGEST_INVALID comes through with its message."""
        async with make_client() as client:
            with pytest.raises(RegistryError, match="DIGEST_INVALID"):
                await client.upload_blob(
                    registry.host, "ai/bad", sha(b"other"), 5, chunks_of(b"hello")
                )

    @pytest.mark.parametrize(("sent", "match"), [(100, "ended after 100 of"), (300, "larger")])
    async def test_upload_of_the_wrong_size_is_refused(self, registry, make_client, sent, match):
        """A body that is not the announced size fails with our message, not a socket error."""
        data = b"s" * sent
        async with make_client() as client:
            with pytest.raises(RegistryError, match=match):
                await client.upload_blob(registry.host, "ai/size", sha(data), 200, chunks_of(data))

    async def test_the_callers_error_inside_an_upload_comes_through(self, registry, make_client):
        """A store error raised by the chunk iterator is not disguised as a registry failure."""

        async def broken() -> AsyncIterator[bytes]:
            yield b"abc"
            raise DigestMismatch("the local blob changed while it was being pushed")

        async with make_client() as client:
            with pytest.raises(DigestMismatch, match="changed while"):
                await client.upload_blob(registry.host, "ai/broken", sha(b"abcdef"), 6, broken())

    async def test_manifest_with_missing_blob_is_refused(self, registry, make_client):
        async with make_client() as client:
            raw = manifest_for(b"{}", [b"never uploaded"])
            with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN"):
                await client.put_manifest(registry.host, "ai/bad", "v1", raw, MEDIA_OCI_MANIFEST)

    async def test_manifest_that_does_not_hash_to_its_digest(self, registry, make_client):
        """A manifest corrupted in the registry's storage is a DigestMismatch, not data."""
        async with make_client() as client:
            raw, digest = await push_artifact(client, registry.host, "ai/rot", "v1", [b"y" * 10])
            path = registry.blob_path(digest)
            path.write_bytes(raw + b"\n")  # still a valid manifest to the registry
            with pytest.raises(DigestMismatch, match="hashes to"):
                await client.get_manifest(registry.host, "ai/rot", digest)

    async def test_corrupted_blob_is_served_as_is(self, registry, make_client):
        """The client hands over what the registry sends; the store's hash catches it."""
        layer = os.urandom(4096)
        async with make_client() as client:
            await push_artifact(client, registry.host, "ai/rotblob", "v1", [layer])
            registry.blob_path(sha(layer)).write_bytes(b"\0" * 4096)
            _, _, data = await read_blob(client, registry.host, "ai/rotblob", sha(layer))
        assert sha(data) != sha(layer)

    async def test_refused_connection_fails_fast_and_clearly(self, make_client):
        """Port 1 refuses: a few quick retries, then a message naming the registry."""
        async with make_client() as client:
            with pytest.raises(RegistryError, match=r"cannot reach registry 127\.0\.0\.1:1: "):
                await client.get_manifest("127.0.0.1:1", "ai/x", "latest")

    async def test_registry_that_comes_back_is_reached(self, registry_factory, make_client):
        """A stopped registry is an error; restarted on the same port and storage, it works."""
        server = registry_factory()
        async with make_client() as client:
            await push_artifact(client, server.host, "ai/back", "v1", [b"z" * 10])
            server.stop()
            with pytest.raises(RegistryError, match="cannot reach registry"):
                await client.head_manifest(server.host, "ai/back", "v1")
            server.start()
            assert await client.head_manifest(server.host, "ai/back", "v1")


class TestInterruptions:
    async def test_download_cut_by_an_outage_resumes_after_restart(
        self, registry_factory, make_client
    ):
        """The registry dies mid-blob: a clear error; back up, a Range request finishes it."""
        server = registry_factory()
        layer = os.urandom(64 << 20)
        got = bytearray()
        async with make_client() as client:
            await push_artifact(client, server.host, "ai/cut", "v1", [layer])

            async def download() -> None:
                async with client.get_blob(server.host, "ai/cut", sha(layer)) as stream:
                    async for chunk in stream.chunks:
                        got.extend(chunk)
                        if server.running:
                            server.stop()

            with pytest.raises(RegistryError, match=r"download of sha256:\w+ from .* broke off"):
                await download()
            assert 0 < len(got) < len(layer)
            server.start()
            offset, total, tail = await read_blob(
                client, server.host, "ai/cut", sha(layer), offset=len(got)
            )
        assert (offset, total) == (len(got), len(layer))
        assert sha(bytes(got) + tail) == sha(layer)

    async def test_stalled_registry_times_out(self, registry_factory, make_client):
        """A registry that holds the connection but sends nothing fails after sock_read."""
        server = registry_factory()
        layer = os.urandom(32 << 20)
        async with make_client(registry_timeout_s=0.5) as client:
            await push_artifact(client, server.host, "ai/stall", "v1", [layer])

            async def download() -> None:
                async with client.get_blob(server.host, "ai/stall", sha(layer)) as stream:
                    server.pause()
                    async for _ in stream.chunks:
                        pass

            with pytest.raises(RegistryError, match="broke off: timed out"):
                await download()
            server.resume()


class TestAuth:
    async def test_anonymous_pull_on_a_token_registry(self, token_registry, make_client, tmp_path):
        """Push with credentials, then pull anonymously with a pull-only token."""
        layer = os.urandom(1000)
        cfg = docker_config(tmp_path, token_registry.host, "tester", "secret")
        async with make_client(cfg) as pusher:
            raw, _ = await push_artifact(pusher, token_registry.host, "ai/tok", "v1", [layer])
        async with make_client() as anon:
            got = await anon.get_manifest(token_registry.host, "ai/tok", "v1")
            _, _, data = await read_blob(anon, token_registry.host, "ai/tok", sha(layer))
        assert (got.raw, data) == (raw, layer)

    async def test_anonymous_push_is_refused_with_a_login_hint(self, token_registry, make_client):
        async with make_client() as anon:
            with pytest.raises(RegistryAuthError, match=r"refused to let us push.*log in"):
                await anon.upload_blob(
                    token_registry.host, "ai/anon", sha(b"a"), 1, chunks_of(b"a")
                )

    async def test_wrong_password_is_an_auth_error(self, token_registry, make_client, tmp_path):
        cfg = docker_config(tmp_path, f"https://{token_registry.host}/v1/", "tester", "wrong")
        async with make_client(cfg) as client:
            with pytest.raises(RegistryAuthError, match=r"refused user 'tester'.*docker-config"):
                await client.get_manifest(token_registry.host, "ai/tok", "v1")

    async def test_tokens_are_cached_per_scope(self, token_registry, make_client, tmp_path):
        """One token per (repository, actions); push renews to pull,push; pull reuses it."""
        server = token_registry.token_server
        cfg = docker_config(tmp_path, token_registry.host, "tester", "secret")
        before = len(server.requests)
        async with make_client(cfg) as client:
            await push_artifact(client, token_registry.host, "ai/scoped", "v1", [b"q" * 99])
            await client.get_manifest(token_registry.host, "ai/scoped", "v1")
            await client.head_manifest(token_registry.host, "ai/scoped", "v1")
            await client.head_manifest(token_registry.host, "ai/other", "v1")
            await client.head_manifest(token_registry.host, "ai/other", "v2")
            scopes = [r.scopes for r in server.requests[before:]]
            assert client.auth.token_requests == len(scopes)
        # The push asked for pull,push up front; that token also served the pulls.
        assert scopes == [("repository:ai/scoped:pull,push",), ("repository:ai/other:pull",)]

    async def test_a_pull_token_is_renewed_for_a_push(self, token_registry, make_client, tmp_path):
        """Scope change: a client holding a pull-only token for a repository gets pull,push
        before it pushes there (oras-py 0.2.43 does not: distribution.md 2.6)."""
        server = token_registry.token_server
        cfg = docker_config(tmp_path, token_registry.host, "tester", "secret")
        before = len(server.requests)
        async with make_client(cfg) as client:
            assert await client.head_manifest(token_registry.host, "ai/upgrade", "v1") is None
            raw, _ = await push_artifact(client, token_registry.host, "ai/upgrade", "v1", [b"u"])
            assert (await client.get_manifest(token_registry.host, "ai/upgrade", "v1")).raw == raw
        scopes = [r.scopes for r in server.requests[before:]]
        assert scopes == [("repository:ai/upgrade:pull",), ("repository:ai/upgrade:pull,push",)]

    async def test_expired_token_is_renewed(self, token_registry, make_client):
        """Past its expiry (clock moved on), a token is fetched again for the same scope."""
        server = token_registry.token_server
        async with make_client() as client:
            now = [0.0]
            client.auth.tokens.clock = lambda: now[0]
            await client.head_manifest(token_registry.host, "ai/exp", "v1")
            await client.head_manifest(token_registry.host, "ai/exp", "v1")
            assert client.auth.token_requests == 1
            now[0] += server.ttl_s
            await client.head_manifest(token_registry.host, "ai/exp", "v1")
            assert client.auth.token_requests == 2

    async def test_basic_auth_registry(self, basic_registry, make_client, tmp_path):
        cfg = tmp_path / "basic.json"
        cfg.write_text(
            json.dumps(
                {
                    "auths": {
                        basic_registry.host: {
                            "username": basic_registry.username,
                            "password": basic_registry.password,
                        }
                    }
                }
            )
        )
        layer = os.urandom(5000)
        async with make_client(cfg) as client:
            raw, _ = await push_artifact(client, basic_registry.host, "ai/basic", "v1", [layer])
            assert (await client.get_manifest(basic_registry.host, "ai/basic", "v1")).raw == raw
        async with make_client() as anon:
            with pytest.raises(RegistryAuthError, match="log in"):
                await anon.get_manifest(basic_registry.host, "ai/basic", "v1")

    async def test_basic_auth_wrong_password(self, basic_registry, make_client, tmp_path):
        cfg = docker_config(tmp_path, basic_registry.host, "tester", "nope")
        async with make_client(cfg) as client:
            with pytest.raises(RegistryAuthError, match="401"):
                await client.get_manifest(basic_registry.host, "ai/basic", "v1")


class TestOrasInterop:
    """oras-py is the independent second implementation: each side reads what the other wrote."""

    async def test_pushed_by_oras_pulled_by_us(self, registry, make_client, tmp_path, tiny_gguf):
        config = tmp_path / "config.json"
        config.write_bytes(json.dumps({"config": {"format": "gguf"}}).encode())
        target = f"{registry.host}/ai/by-oras:v1"
        await asyncio.to_thread(oras_push, registry.host, target, tiny_gguf, config)
        async with make_client() as client:
            manifest = (await client.get_manifest(registry.host, "ai/by-oras", "v1")).json()
            layer = manifest["layers"][0]
            _, _, data = await read_blob(client, registry.host, "ai/by-oras", layer["digest"])
            cfg = manifest["config"]["digest"]
            _, _, cfg_data = await read_blob(client, registry.host, "ai/by-oras", cfg)
        assert layer["mediaType"] == GGUF_MEDIA
        assert data == tiny_gguf.read_bytes()
        assert cfg_data == config.read_bytes()

    async def test_pushed_by_us_pulled_by_oras(self, registry, make_client, tmp_path, tiny_gguf):
        layer = tiny_gguf.read_bytes()
        async with make_client() as client:
            raw, _ = await push_artifact(client, registry.host, "ai/by-us", "v1", [layer])

        target = f"{registry.host}/ai/by-us:v1"
        manifest, files = await asyncio.to_thread(
            oras_pull, registry.host, target, tmp_path / "oras-out"
        )
        assert manifest == json.loads(raw)
        assert [Path(f).read_bytes() for f in files] == [layer]
