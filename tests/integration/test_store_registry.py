"""The store against real docker-registry processes: push, pull, resume, corruption, auth, oras."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from modelrunner.config import StoreConfig
from modelrunner.distribution import ProgressEvent, Store, stamps
from modelrunner.distribution import pull as pull_module
from modelrunner.errors import (
    DigestMismatch,
    InsufficientStorage,
    ModelNotFound,
    RegistryAuthError,
    RegistryError,
)
from scripts.make_tiny_gguf import build as build_tiny_gguf
from tests.fixtures.registry import oras_pull, oras_push

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., Store]:
    """Fresh stores (opened by the test) with a private docker config."""
    made: list[Store] = []

    def make(name: str = "store", docker_config: Path | None = None, **kw: object) -> Store:
        cfg = StoreConfig(
            path=tmp_path / name,
            docker_config=docker_config or tmp_path / "no-docker-config.json",
            **{"registry_timeout_s": 10, "min_free_bytes": 0, **kw},  # type: ignore[arg-type]
        )
        s = Store(cfg)
        made.append(s)
        return s

    return make


@pytest.fixture(scope="module")
def big_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48 MiB model: large enough that a stall lands mid-layer."""
    return build_tiny_gguf(tmp_path_factory.mktemp("big") / "big.gguf", seed=16, pad_mib=48)


@pytest.fixture
async def stores(make_store: Callable[..., Store]) -> AsyncIterator[tuple[Store, Store]]:
    a, b = make_store("a"), make_store("b")
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def publish(store: Store, gguf: Path, ref: str) -> str:
    """Package *gguf* as *ref* and push it; the digest of the layer that holds the GGUF."""
    made = await store.package(gguf, ref)
    await store.push(ref)
    digest: str = json.loads(made.manifest_path.read_bytes())["layers"][0]["digest"]
    return digest


async def test_package_push_remove_pull_back_byte_identical(
    registry, stores, tiny_gguf: Path, tmp_path: Path
):
    """The round trip keeps the model id, every byte, and reports Docker's progress."""
    a, b = stores
    lic = tmp_path / "LICENSE"
    lic.write_text("MIT")
    ref = f"{registry.host}/ai/round:v1"
    made = await a.package(tiny_gguf, ref, license=lic)
    pushed: list[ProgressEvent] = []
    await a.push(ref, pushed.append)
    assert pushed[-1].to_json()["type"] == "success"
    assert pushed[-1].message == "Model pushed successfully"
    assert {e.mode for e in pushed} == {"push"}
    layer_digests = {d["digest"] for d in json.loads(made.manifest_path.read_bytes())["layers"]}
    sent = {e.digest: e for e in pushed if e.kind == "progress"}  # the last event per layer
    assert set(sent) == layer_digests
    assert all(e.layer_current == e.layer_size > 0 for e in sent.values())
    assert max(e.current for e in sent.values()) == made.size_bytes
    await a.remove(ref)
    assert await a.list_models() == []
    events: list[ProgressEvent] = []
    got = await a.pull(ref, events.append)
    assert got.id == made.id
    assert got.gguf_paths[0].read_bytes() == tiny_gguf.read_bytes()
    assert got.license_paths[0].read_text() == "MIT"
    assert got.tags == (ref,)
    layers = [e for e in events if e.kind == "progress"]
    assert {e.digest for e in layers} == {
        d["digest"] for d in json.loads(got.manifest_path.read_bytes())["layers"]
    }
    last = layers[-1].to_json()
    assert last["total"] == got.size_bytes
    assert last["mode"] == "pull"
    assert events[-1].message == "Model pulled successfully"
    # A second store pulls it too; a second pull of it is served from the store.
    other = await b.pull(ref)
    assert other.id == made.id
    again: list[ProgressEvent] = []
    await b.pull(ref, again.append)
    assert [e.message for e in again] == [f"Using cached model: {other.config['size']}"]


async def test_two_tags_share_blobs_and_remove_keeps_them(registry, stores, tiny_gguf_factory):
    a, b = stores
    gguf = tiny_gguf_factory(seed=11)
    one, two = f"{registry.host}/ai/shared:one", f"{registry.host}/ai/shared:two"
    await a.package(gguf, one)
    await a.tag(one, two)
    await a.push(one)
    await a.push(two)
    m1 = await b.pull(one)
    m2 = await b.pull(two)
    assert m1.id == m2.id
    assert len(await b.list_models()) == 1
    await b.remove(one)
    assert (await b.get(two)).gguf_paths[0].read_bytes() == gguf.read_bytes()


async def test_missing_repository_and_tag_are_model_not_found(registry, stores, tiny_gguf):
    a, _ = stores
    with pytest.raises(ModelNotFound, match="ai/absent"):
        await a.pull(f"{registry.host}/ai/absent:v1")
    ref = f"{registry.host}/ai/present:v1"
    await a.package(tiny_gguf, ref)
    await a.push(ref)
    with pytest.raises(ModelNotFound, match="present:v9"):
        await a.pull(f"{registry.host}/ai/present:v9")
    assert [m.tags for m in await a.list_models()] == [(ref,)]


async def test_concurrent_pulls_of_one_model_download_once(registry, stores, tiny_gguf_factory):
    a, b = stores
    ref = f"{registry.host}/ai/together:v1"
    await a.package(tiny_gguf_factory(seed=12), ref)
    await a.push(ref)
    with capture_logs() as logs:
        models = await asyncio.gather(*(b.pull(ref) for _ in range(3)))
    assert len({m.id for m in models}) == 1
    assert [e["event"] for e in logs].count("store.pull_started") == 1


async def test_corrupted_blob_is_a_digest_error_and_leaves_no_model(
    registry_factory, make_store, tiny_gguf_factory
):
    reg = registry_factory()
    a, b = make_store("a"), make_store("b")
    await a.open()
    await b.open()
    try:
        ref = f"{reg.host}/ai/corrupt:v1"
        layer = await publish(a, tiny_gguf_factory(seed=13), ref)
        path = reg.blob_path(layer)
        data = bytearray(path.read_bytes())
        data[1000] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(DigestMismatch, match="digest mismatch"):
            await b.pull(ref)
        assert await b.list_models() == []
        assert list(b.layout.manifests_dir.iterdir()) == []
        assert not b.layout.blob(layer).exists()
        assert not b.layout.incomplete(layer).exists()
    finally:
        await a.close()
        await b.close()


async def test_a_pull_killed_half_way_resumes_and_verifies(registry, stores, tiny_gguf_factory):
    """What a killed pull leaves (half a layer in .incomplete) is resumed with Range."""
    a, b = stores
    gguf = tiny_gguf_factory(seed=14)
    ref = f"{registry.host}/ai/resume:v1"
    layer = await publish(a, gguf, ref)
    data = gguf.read_bytes()
    half = len(data) // 2
    b.layout.incomplete(layer).write_bytes(data[:half])
    with capture_logs() as logs:
        got = await b.pull(ref)
    assert got.gguf_paths[0].read_bytes() == data
    resumed = [e for e in logs if e["event"] == "store.resume"]
    assert [e["offset"] for e in resumed] == [half]
    assert not b.layout.incomplete(layer).exists()


KILLED_CHILD = """
import asyncio, os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from modelrunner.config import StoreConfig
from modelrunner.distribution import Store

def die_half_way(event):
    if event.digest == {layer!r} and 0 < event.layer_current < event.layer_size:
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill, mid-layer, nothing cleaned up

async def main():
    store = Store(StoreConfig(path=Path({path!r}), docker_config=Path({path!r}) / "none.json"))
    await store.open()
    await store.pull({ref!r}, die_half_way)

asyncio.run(main())
"""


async def test_a_pull_process_killed_mid_layer_resumes_and_verifies(
    registry, stores, big_gguf: Path
):
    """SIGKILL a pulling process mid-layer; the next pull resumes from its .incomplete."""
    a, b = stores
    ref = f"{registry.host}/ai/killed:v1"
    layer = await publish(a, big_gguf, ref)
    code = KILLED_CHILD.format(root=str(ROOT), layer=layer, path=str(b.root), ref=ref)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await proc.wait() == -signal.SIGKILL
    part = b.layout.incomplete(layer).stat().st_size
    assert 0 < part < big_gguf.stat().st_size
    assert await b.list_models() == []
    with capture_logs() as logs:
        got = await b.pull(ref)
    assert got.gguf_paths[0].read_bytes() == big_gguf.read_bytes()
    assert [e["offset"] for e in logs if e["event"] == "store.resume"] == [part]


PULL_CHILD = """
import asyncio, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from modelrunner.config import StoreConfig
from modelrunner.distribution import Store

async def main():
    store = Store(StoreConfig(path=Path({path!r}), docker_config=Path({path!r}) / "none.json"))
    await store.open()
    print((await store.pull({ref!r})).id)
    await store.close()

asyncio.run(main())
"""


async def test_two_processes_pulling_one_model_share_the_store(registry, stores, big_gguf: Path):
    """The .incomplete is flocked: one process writes it, the other waits and finds it done."""
    a, b = stores
    ref = f"{registry.host}/ai/twoproc:v1"
    made = await a.package(big_gguf, ref)
    await a.push(ref)
    code = PULL_CHILD.format(root=str(ROOT), path=str(b.root), ref=ref)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    layer = json.loads(made.manifest_path.read_bytes())["layers"][0]["digest"]
    async with asyncio.timeout(30):  # an external process: wait until its download has begun
        while not (b.layout.incomplete(layer).exists() or b.layout.blob(layer).exists()):
            await asyncio.sleep(0.005)
    mine = await b.pull(ref)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().strip().splitlines()[-1] == mine.id == made.id
    assert mine.gguf_paths[0].read_bytes() == big_gguf.read_bytes()
    assert [m.id for m in await b.list_models()] == [made.id]


async def test_a_wrong_partial_file_is_caught_and_thrown_away(registry, stores, tiny_gguf_factory):
    a, b = stores
    gguf = tiny_gguf_factory(seed=15)
    ref = f"{registry.host}/ai/badpart:v1"
    layer = await publish(a, gguf, ref)
    b.layout.incomplete(layer).write_bytes(b"\0" * 1000)
    with pytest.raises(DigestMismatch):
        await b.pull(ref)
    assert not b.layout.incomplete(layer).exists()
    assert (await b.pull(ref)).gguf_paths[0].read_bytes() == gguf.read_bytes()


async def test_a_stream_that_breaks_mid_layer_is_resumed_in_the_same_pull(
    registry_factory, make_store, big_gguf
):
    """The registry stalls past the read timeout, then comes back: the pull goes on with Range."""
    reg = registry_factory()
    a = make_store("a")
    b = make_store("b", registry_timeout_s=0.5)
    await a.open()
    await b.open()
    try:
        ref = f"{reg.host}/ai/flaky:v1"
        layer = await publish(a, big_gguf, ref)
        loop = asyncio.get_running_loop()
        stalled = []

        def stall(e: ProgressEvent) -> None:
            if e.digest == layer and e.layer_current > 0 and not stalled:
                stalled.append(e.layer_current)
                reg.pause()
                # Back well after the 0.5 s read timeout broke the stream, while the resumed
                # GET is still being retried by the client.
                loop.call_later(1.5, reg.resume)

        with capture_logs() as logs:
            got = await b.pull(ref, stall)
        assert stalled
        assert got.gguf_paths[0].read_bytes() == big_gguf.read_bytes()
        assert [e["event"] for e in logs].count("store.stream_resumed") == 1
    finally:
        reg.resume()
        await a.close()
        await b.close()


async def test_a_stalled_registry_fails_keeps_the_part_and_the_next_pull_resumes(
    registry_factory, make_store, big_gguf, monkeypatch
):
    """The registry stops answering mid-layer: the pull fails, the next one resumes."""
    monkeypatch.setattr(pull_module, "STREAM_RESUMES", 0)  # no in-pull retries: fail at once
    reg = registry_factory()
    a = make_store("a")
    b = make_store("b", registry_timeout_s=0.5)
    await a.open()
    await b.open()
    try:
        gguf = big_gguf
        ref = f"{reg.host}/ai/stall:v1"
        layer = await publish(a, gguf, ref)

        def stall(e: ProgressEvent) -> None:
            if e.digest == layer and e.layer_current > 0 and reg.running:
                reg.pause()

        with pytest.raises(RegistryError):
            await b.pull(ref, stall)
        reg.resume()
        part = b.layout.incomplete(layer).stat().st_size
        assert 0 < part < gguf.stat().st_size
        assert await b.list_models() == []
        with capture_logs() as logs:
            got = await b.pull(ref)
        assert got.gguf_paths[0].read_bytes() == gguf.read_bytes()
        assert [e["offset"] for e in logs if e["event"] == "store.resume"] == [part]
    finally:
        reg.resume()
        await a.close()
        await b.close()


async def test_no_space_is_refused_before_a_byte_is_written(registry, stores, tiny_gguf_factory):
    a, b = stores
    ref = f"{registry.host}/ai/nospace:v1"
    await a.package(tiny_gguf_factory(seed=17), ref)
    await a.push(ref)
    store = Store(
        StoreConfig(path=b.root, docker_config=b.config.docker_config, min_free_bytes=1 << 60)
    )
    await store.open()
    try:
        with pytest.raises(InsufficientStorage, match="not enough free space"):
            await store.pull(ref)
    finally:
        await store.close()
    assert list(b.layout.blobs_dir.iterdir()) == []


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    path = tmp_path / "docker-config.json"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


async def test_basic_auth_registry(basic_registry, make_store, tiny_gguf_factory, tmp_path):
    """Push and pull need the credentials from ~/.docker/config.json."""
    await auth_round_trip(basic_registry, make_store, tiny_gguf_factory(seed=18), tmp_path, False)


async def test_token_auth_registry(token_registry, make_store, tiny_gguf_factory, tmp_path):
    """Push needs credentials; an anonymous pull gets a pull-only token."""
    await auth_round_trip(token_registry, make_store, tiny_gguf_factory(seed=19), tmp_path, True)


async def auth_round_trip(reg, make_store, gguf: Path, tmp_path: Path, anon_pull: bool) -> None:
    creds = docker_config(tmp_path, reg.host, reg.username or "tester", reg.password or "secret")
    a = make_store("a", docker_config=creds)
    anon = make_store("anon")
    await a.open()
    await anon.open()
    try:
        ref = f"{reg.host}/ai/authed:v1"
        made = await a.package(gguf, ref)
        await anon.package(gguf, ref)
        with pytest.raises(RegistryAuthError):
            await anon.push(ref)
        await anon.remove(ref)
        await a.push(ref)
        await a.remove(ref)
        assert (await a.pull(ref)).id == made.id
        if anon_pull:
            assert (await anon.pull(ref)).id == made.id
        else:
            with pytest.raises(RegistryAuthError):
                await anon.pull(ref)
    finally:
        await a.close()
        await anon.close()


class TestOras:
    """oras-py is the independent second implementation, both ways, byte for byte."""

    async def test_pushed_by_oras_pulled_by_us(self, registry, stores, tmp_path, tiny_gguf):
        _, b = stores
        config = tmp_path / "config.json"
        config.write_bytes(json.dumps({"config": {"format": "gguf"}}).encode())
        target = f"{registry.host}/ai/oras-made:v1"
        await asyncio.to_thread(oras_push, registry.host, target, tiny_gguf, config)
        model = await b.pull(target)
        assert model.gguf_paths[0].read_bytes() == tiny_gguf.read_bytes()
        assert model.config == {"format": "gguf"}
        assert model.arch_params["n_layers"] == 2  # read from the GGUF: no gguf map in config

    async def test_pushed_by_us_pulled_by_oras(self, registry, stores, tmp_path, tiny_gguf):
        a, _ = stores
        ref = f"{registry.host}/ai/us-made:v1"
        made = await a.package(tiny_gguf, ref)
        await a.push(ref)
        manifest, files = await asyncio.to_thread(
            oras_pull, registry.host, ref, tmp_path / "oras-out"
        )
        assert manifest == json.loads(made.manifest_path.read_bytes())
        assert [Path(f).read_bytes() for f in files] == [tiny_gguf.read_bytes()]


async def test_push_refuses_a_corrupt_local_blob(registry, stores, tiny_gguf_factory):
    """The bytes are hashed as they are read: a damaged store is not uploaded as the model."""
    a, _ = stores
    ref = f"{registry.host}/ai/damaged:v1"
    made = await a.package(tiny_gguf_factory(seed=24), ref)
    path = made.gguf_paths[0]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match="corrupt"):
        await a.push(ref)
    with pytest.raises(ModelNotFound):
        await a.pull(ref)  # the manifest never reached the registry


async def verified(path: Path) -> bool:
    return await asyncio.to_thread(stamps.still_verified, path)


async def test_push_of_a_stamped_blob_damaged_behind_its_stamp(registry, stores, tiny_gguf_factory):
    """A blob still stamped as verified is sent unhashed; the registry's DIGEST_INVALID is
    confirmed by a local hash and reported as a corrupt blob, and the stamp is dropped."""
    a, _ = stores
    ref = f"{registry.host}/ai/hidden-damage:v1"
    made = await a.package(tiny_gguf_factory(seed=25), ref)
    path = made.gguf_paths[0]
    assert await verified(path)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # same inode and size; the mtime is put back below
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert await verified(path)
    with pytest.raises(DigestMismatch, match="corrupt; pull it again"):
        await a.push(ref)
    assert not await verified(path)
    with pytest.raises(ModelNotFound):
        await a.pull(ref)  # the manifest never reached the registry
    with pytest.raises(DigestMismatch, match="corrupt"):
        await a.push(ref)  # hashed this time, and refused before the registry's answer


async def test_pulled_blobs_are_stamped_and_the_stamps_follow_them(
    registry, stores, tiny_gguf_factory
):
    a, b = stores
    ref = f"{registry.host}/ai/stamped:v1"
    await publish(a, tiny_gguf_factory(seed=26), ref)
    got = await b.pull(ref)
    path = got.gguf_paths[0]
    assert await verified(path)
    other = f"{registry.host}/ai/stamped-again:v1"
    await b.tag(ref, other)
    await b.push(other)  # sent on the strength of the stamp; the registry took it
    assert await verified(path)
    await b.remove(got.id, force=True)
    assert not await asyncio.to_thread(stamps.stamp_path(path).exists)
