"""``load_archive``: the tar Docker's CLI streams to ``POST /models/load``."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelrunner.config import StoreConfig
from modelrunner.distribution import Store
from modelrunner.errors import DigestMismatch, InvalidRequest


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    a = Store(StoreConfig(path=tmp_path / "a"))
    b = Store(StoreConfig(path=tmp_path / "b"))
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


def docker_tar(store: Store, model_id: str, *, corrupt: bool = False, fmt: int = 0) -> bytes:
    """The tar as Docker's tarball target writes it: dirs, every blob, then manifest.json."""
    raw = store.layout.manifest(model_id).read_bytes()
    doc = json.loads(raw)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt or tarfile.USTAR_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for desc in [*doc["layers"], doc["config"]]:
            data = store.layout.blob(desc["digest"]).read_bytes()
            if corrupt and desc is doc["layers"][0]:
                data = b"x" + data[1:]
            info = tarfile.TarInfo("blobs/sha256/" + desc["digest"].removeprefix("sha256:"))
            info.size, info.mode = len(data), 0o666
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("manifest.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


async def chunked(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_loads_untagged_then_tags(two, tiny_gguf: Path):
    a, b = two
    made = await a.package(tiny_gguf, "ai/tiny:v1")
    events = []
    model = await b.load_archive(chunked(docker_tar(a, made.id)), None, events.append)
    assert model.id == made.id
    assert model.tags == ()
    assert model.gguf_paths[0].read_bytes() == tiny_gguf.read_bytes()
    assert events[-1].message == "Model loaded successfully"
    tagged = await b.load_archive(chunked(docker_tar(a, made.id), 1 << 20), "ai/loaded:v2")
    assert tagged.tags == ("ai/loaded:v2",)


async def test_pax_archives_load(two, tiny_gguf: Path):
    a, b = two
    made = await a.package(tiny_gguf, "ai/tiny:v1")
    model = await b.load_archive(chunked(docker_tar(a, made.id, fmt=tarfile.PAX_FORMAT)), "ai/x")
    assert model.id == made.id


async def test_a_corrupt_blob_is_refused_and_leaves_no_model(two, tiny_gguf: Path):
    a, b = two
    made = await a.package(tiny_gguf, "ai/tiny:v1")
    with pytest.raises(DigestMismatch):
        await b.load_archive(chunked(docker_tar(a, made.id, corrupt=True)), "ai/x")
    assert await b.list_models() == []
    assert [p.name for p in b.layout.blobs_dir.iterdir() if ".tmp-" in p.name] == []


async def test_truncated_or_incomplete_archives_are_refused(two, tiny_gguf: Path):
    a, b = two
    made = await a.package(tiny_gguf, "ai/tiny:v1")
    data = docker_tar(a, made.id)
    with pytest.raises(InvalidRequest, match="truncated"):
        await b.load_archive(chunked(data[: len(data) // 2]), "ai/x")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(InvalidRequest, match=r"no manifest\.json"):
        await b.load_archive(chunked(buf.getvalue()), "ai/x")
    assert await b.list_models() == []
