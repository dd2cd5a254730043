"""The store on disk: package, list, get, tag, remove, gc, purge; shared with other processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from modelrunner.config import StoreConfig
from modelrunner.distribution import Store
from modelrunner.distribution import mediatypes as mt
from modelrunner.errors import (
    Conflict,
    InvalidReference,
    InvalidRequest,
    ModelNotFound,
    StoreError,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(StoreConfig(path=tmp_path / "store", docker_config=tmp_path / "none.json"))
    await s.open()
    yield s
    await s.close()


def manifest_doc(store: Store, model_id: str) -> dict:
    return json.loads(store.layout.manifest(model_id).read_bytes())


async def test_package_writes_dockers_artifact(store: Store, tiny_gguf: Path, tmp_path: Path):
    """Media types, annotations, config and models.json are what Docker writes."""
    lic = tmp_path / "LICENSE"
    lic.write_text("MIT\n")
    tmpl = tmp_path / "template.jinja"
    tmpl.write_text("{{ messages }}")
    model = await store.package(tiny_gguf, "ai/tiny:v1", license=lic, chat_template=tmpl)
    doc = manifest_doc(store, model.id)
    assert doc["mediaType"] == mt.OCI_MANIFEST
    assert "artifactType" not in doc
    assert doc["config"]["mediaType"] == mt.CONFIG_V01
    assert [x["mediaType"] for x in doc["layers"]] == [mt.GGUF, mt.LICENSE, mt.CHAT_TEMPLATE]
    ann = doc["layers"][0]["annotations"]
    assert ann[mt.ANNOTATION_FILEPATH] == tiny_gguf.name
    assert json.loads(ann[mt.ANNOTATION_FILE_METADATA])["size"] == tiny_gguf.stat().st_size
    config = json.loads(store.layout.blob(doc["config"]["digest"]).read_bytes())
    assert config["rootfs"]["diff_ids"] == [x["digest"] for x in doc["layers"]]
    assert config["descriptor"]["created"].endswith("Z")
    assert list(config["config"])[:5] == [
        "format",
        "quantization",
        "parameters",
        "architecture",
        "size",
    ]
    index = json.loads(store.layout.index_path.read_text())
    assert index == {
        "models": [
            {
                "id": model.id,
                "tags": ["docker.io/ai/tiny:v1"],
                "files": [x["digest"] for x in doc["layers"]] + [doc["config"]["digest"]],
            }
        ]
    }
    assert model.gguf_paths[0].read_bytes() == tiny_gguf.read_bytes()
    assert model.license_paths[0].read_text() == "MIT\n"
    assert model.chat_template_path is not None
    assert model.chat_template_path.read_text() == "{{ messages }}"
    assert model.trained_context == 512
    assert model.context_size == 512
    assert model.arch_params["n_layers"] == 2
    assert model.estimated_bytes == tiny_gguf.stat().st_size
    api = model.to_api()
    assert list(api) == ["id", "tags", "created", "config"]
    assert api["tags"] == ["docker.io/ai/tiny:v1"]
    assert abs(api["created"] - time.time()) < 600
    assert api["config"]["architecture"] == "llama"


async def test_mmproj_is_packaged_last(store: Store, tiny_gguf_factory: Callable):
    """Docker's CLI order: weights, then the multimodal projector (its own GGUF)."""
    proj = tiny_gguf_factory(seed=9, name="proj")
    model = await store.package(tiny_gguf_factory(seed=8), "ai/mm", mmproj=proj)
    doc = manifest_doc(store, model.id)
    assert [x["mediaType"] for x in doc["layers"]] == [mt.GGUF, mt.MMPROJ]
    assert model.mmproj_path is not None
    assert model.mmproj_path.read_bytes() == proj.read_bytes()


async def test_context_size_override(store: Store, tiny_gguf: Path):
    model = await store.package(tiny_gguf, "ai/tiny:ctx", context_size=256)
    assert model.context_size == 256
    assert model.trained_context == 512


async def test_package_refuses_what_is_not_gguf(store: Store, tmp_path: Path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidRequest, match="GGUF"):
        await store.package(bad, "ai/bad")
    with pytest.raises(InvalidRequest, match="does not exist"):
        await store.package(tmp_path / "missing.gguf", "ai/bad")
    assert await store.list_models() == []


async def test_get_by_every_kind_of_name(store: Store, tiny_gguf: Path):
    """Tags normalise; sha256:, bare 64 hex, 12-hex short id and a partial name all resolve."""
    model = await store.package(tiny_gguf, "ai/smollm2")
    hexid = model.id.removeprefix("sha256:")
    for ref in (
        "ai/smollm2",
        "smollm2",
        "docker.io/ai/smollm2:latest",
        "ai/smollm2:latest",
        model.id,
        hexid,
        hexid[:12],
        f"ai/smollm2@{model.id}",
    ):
        assert (await store.get(ref)).id == model.id, ref
    assert (await store.get("ai/smollm2")).tags == ("ai/smollm2:latest",)


async def test_partial_name_finds_a_tagged_model(store: Store, tiny_gguf: Path):
    model = await store.package(tiny_gguf, "ai/smollm2:v2")
    assert (await store.get("smollm2")).id == model.id


async def test_unknown_model_says_how_to_pull_it(store: Store, tiny_gguf: Path):
    await store.package(tiny_gguf, "ai/tiny")
    with pytest.raises(ModelNotFound, match="modelrunner pull ai/other"):
        await store.get("ai/other")
    with pytest.raises(ModelNotFound):
        await store.get("ai/tiny:v9")
    with pytest.raises(InvalidReference):
        await store.get("ai/../x")


async def test_two_tags_share_every_blob(store: Store, tiny_gguf: Path):
    a = await store.package(tiny_gguf, "ai/a")
    b = await store.tag("ai/a", "ai/b:v2")
    assert a.id == b.id
    assert b.tags == ("ai/a:latest", "ai/b:v2")
    assert len(await store.list_models()) == 1


async def test_a_tag_moves_to_the_model_it_names(store: Store, tiny_gguf_factory: Callable):
    """A tag belongs to one model: re-tagging leaves the old model untagged (by id only)."""
    a = await store.package(tiny_gguf_factory(seed=1), "ai/m")
    b = await store.package(tiny_gguf_factory(seed=2), "ai/m")
    assert a.id != b.id
    assert (await store.get("ai/m")).id == b.id
    assert (await store.get(a.id)).tags == ()
    assert "tags" not in (await store.get(a.id)).to_api()


async def test_remove_untags_then_deletes(store: Store, tiny_gguf: Path):
    """Docker's rules: a tag of several only untags; by id with several tags needs force."""
    model = await store.package(tiny_gguf, "ai/a")
    await store.tag("ai/a", "ai/b")
    res = await store.remove("ai/b")
    assert res.to_api() == [{"Untagged": "docker.io/ai/b:latest"}]
    await store.tag("ai/a", "ai/c")
    with pytest.raises(Conflict, match="must be forced"):
        await store.remove(model.id)
    res = await store.remove(model.short_id, force=True)
    assert res.to_api() == [
        {"Untagged": "docker.io/ai/a:latest"},
        {"Untagged": "docker.io/ai/c:latest"},
        {"Deleted": model.id},
    ]
    assert await store.list_models() == []
    assert not model.gguf_paths[0].exists()
    assert not store.layout.manifest(model.id).exists()
    with pytest.raises(ModelNotFound):
        await store.remove("ai/a")


async def test_remove_refuses_a_model_in_use(store: Store, tiny_gguf: Path):
    model = await store.package(tiny_gguf, "ai/a")
    with pytest.raises(Conflict, match="in use"):
        await store.remove("ai/a", in_use=lambda mid: mid == model.id)
    assert (await store.get("ai/a")).id == model.id
    await store.remove("ai/a", in_use=lambda mid: True, force=True)
    assert await store.list_models() == []


async def test_remove_keeps_blobs_another_model_uses(store: Store, tiny_gguf: Path, tmp_path: Path):
    """Same weights, different license: two models; removing one keeps the shared GGUF."""
    lic = tmp_path / "LICENSE"
    lic.write_text("Apache-2.0")
    a = await store.package(tiny_gguf, "ai/a")
    b = await store.package(tiny_gguf, "ai/b", license=lic)
    assert a.id != b.id
    assert a.gguf_paths == b.gguf_paths
    await store.remove("ai/b")
    assert a.gguf_paths[0].exists()
    assert not b.license_paths[0].exists()
    assert (await store.get("ai/a")).gguf_paths[0].read_bytes() == tiny_gguf.read_bytes()


async def test_open_sweeps_only_stale_incomplete_files(tmp_path: Path):
    cfg = StoreConfig(path=tmp_path / "s", incomplete_max_age_s=3600)
    s = Store(cfg)
    await s.open()
    old = s.layout.blobs_dir / ("1" * 64 + ".incomplete")
    new = s.layout.blobs_dir / ("2" * 64 + ".incomplete")
    tmp = s.layout.root / "models.json.tmp-abc"
    for p in (old, new, tmp):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 7200,) * 2)
    os.utime(tmp, (time.time() - 7200,) * 2)
    await Store(cfg).open()
    assert not old.exists()
    assert new.exists()
    assert not tmp.exists()
    await s.close()


async def test_gc_and_purge(store: Store, tiny_gguf: Path):
    """Orphans (a blob or manifest no model lists) go on gc; purge empties the store."""
    model = await store.package(tiny_gguf, "ai/a")
    orphan = store.layout.blobs_dir / ("3" * 64)
    orphan.write_bytes(b"orphan")
    lone = store.layout.manifests_dir / ("4" * 64)
    lone.write_bytes(b"{}")
    stale = store.layout.blobs_dir / ("6" * 64 + ".incomplete")
    fresh = store.layout.blobs_dir / ("7" * 64 + ".incomplete")  # a pull to resume
    for part in (stale, fresh):
        part.write_bytes(b"half")
    week_ago = time.time() - store.config.incomplete_max_age_s - 60
    os.utime(stale, (week_ago, week_ago))
    gone_bundle = store.layout.bundle("sha256:" + "8" * 64)
    gone_bundle.mkdir(parents=True)
    assert (await store.gc()).blobs_removed == 0  # too young: maybe another process's pull
    assert not stale.exists()
    assert fresh.exists()
    assert not gone_bundle.exists()
    result = await store.gc(min_age_s=0)
    assert (result.blobs_removed, result.manifests_removed) == (1, 1)
    assert not orphan.exists()
    assert not lone.exists()
    assert fresh.exists()
    assert (await store.get("ai/a")).id == model.id
    assert await store.disk_usage() >= tiny_gguf.stat().st_size
    await store.purge()
    assert await store.list_models() == []
    assert not model.gguf_paths[0].exists()


async def test_a_blob_without_manifest_never_lists(store: Store, tiny_gguf: Path):
    """What a crash mid-pull leaves (blobs, no manifest/index entry) is not a model."""
    (store.layout.blobs_dir / ("5" * 64)).write_bytes(b"half a model")
    assert await store.list_models() == []


CHILD = """
import asyncio, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from modelrunner.config import StoreConfig
from modelrunner.distribution import Store
async def main():
    s = Store(StoreConfig(path=Path({path!r})))
    await s.open()
    for i in range({n}):
        await s.package(Path({gguf!r}), f"ai/{prefix}-{{i}}")
    await s.close()
asyncio.run(main())
"""


async def test_processes_share_one_store(store: Store, tiny_gguf: Path):
    """Two processes and this one package at once: no index update is lost; each sees all."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD.format(root=str(ROOT), path=str(store.root), n=4, gguf=str(tiny_gguf), prefix=p),
        )
        for p in ("x", "y")
    ]
    for i in range(4):
        await store.package(tiny_gguf, f"ai/z-{i}")
    assert [await p.wait() for p in procs] == [0, 0]
    models = await store.list_models()
    tags = sorted(t for m in models for t in m.tags)
    assert tags == sorted(f"ai/{p}-{i}:latest" for p in "xyz" for i in range(4))
    assert (await store.get("ai/x-3")).gguf_paths[0].read_bytes() == tiny_gguf.read_bytes()


async def test_sharded_models_get_shard_names(store: Store, tiny_gguf: Path, tmp_path: Path):
    """Each shard is a layer in order; llama.cpp gets them hard-linked under shard names."""
    first = tmp_path / "m-00001-of-00002.gguf"
    second = tmp_path / "m-00002-of-00002.gguf"
    first.write_bytes(tiny_gguf.read_bytes())
    second.write_bytes(b"second shard")
    model = await store.package(first, "ai/sharded")
    assert [p.name for p in model.gguf_paths] == [
        "model-00001-of-00002.gguf",
        "model-00002-of-00002.gguf",
    ]
    assert [p.read_bytes() for p in model.gguf_paths] == [first.read_bytes(), b"second shard"]
    assert model.estimated_bytes == first.stat().st_size + len(b"second shard")
    await store.remove("ai/sharded")
    assert not store.layout.bundle(model.id).exists()


async def test_gc_drops_an_index_entry_whose_files_are_gone(store: Store, tiny_gguf: Path):
    """A hand-damaged store: the entry that cannot load goes; its surviving blobs are orphans."""
    model = await store.package(tiny_gguf, "ai/a")
    keep = await store.package(tiny_gguf, "ai/b")
    store.layout.manifest(model.id).unlink()
    result = await store.gc(min_age_s=0)
    assert result.broken_models_removed == 1
    assert json.loads(store.layout.index_path.read_text())["models"][0]["id"] == keep.id
    assert (await store.get("ai/b")).gguf_paths[0].exists()
    assert [m.id for m in await store.list_models()] == [keep.id]


async def test_a_corrupt_index_is_a_store_error(store: Store):
    store.layout.index_path.write_text('{"models": [{"id": "sha256:../../x", "files": []}]}')
    with pytest.raises(StoreError, match="corrupt"):
        await store.list_models()
    store.layout.index_path.write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        await store.get("ai/x")


async def test_reads_a_store_docker_wrote(store: Store, tiny_gguf: Path):
    """Go's null tags and the legacy index.docker.io/library/… tags of older stores."""
    model = await store.package(tiny_gguf, "ai/x")
    doc = json.loads(store.layout.index_path.read_text())
    doc["models"][0]["tags"] = ["index.docker.io/library/smol:latest"]
    doc["models"].append({"id": "sha256:" + "9" * 64, "tags": None, "files": None})
    store.layout.index_path.write_text(json.dumps(doc, indent=2))
    assert (await store.get("smol")).id == model.id
    assert (await store.get("ai/smol:latest")).id == model.id
    assert [m.id for m in await store.list_models()] == [model.id]  # no manifest: skipped
