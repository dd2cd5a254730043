"""The catalog: which config-file entry names a model, the settings overlay, the lookup cache,
and what the supervisor's resolve hands over."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrunner.config import Config
from modelrunner.distribution.model import Model
from modelrunner.errors import InvalidRequest, ModelNotFound
from modelrunner.server.catalog import Catalog
from modelrunner.server.settings import SettingsFile

ID = "sha256:" + "ab" * 32


def model(**extra: object) -> Model:
    fields: dict[str, object] = {
        "id": ID,
        "tags": ("ai/x:latest",),
        "store_tags": ("docker.io/ai/x:latest",),
        "created": 1,
        "config": {"format": "gguf", "context_size": 2048},
        "gguf_paths": (Path("/m/x.gguf"),),
        "trained_context": 4096,
        "estimated_bytes": 1000,
        "arch_params": {"n_layers": 2, "n_embd": 64, "n_head": 4, "n_head_kv": 2},
    }
    fields.update(extra)
    return Model(**fields)  # type: ignore[arg-type]


class FakeStore:
    def __init__(self) -> None:
        self.gets = 0

    async def get(self, ref: str) -> Model:
        self.gets += 1
        if ref in ("ai/x", "ai/x:latest", ID):
            return model()
        raise ModelNotFound(ref)


def catalog(tmp_path: Path, models: dict[str, object] | None = None) -> Catalog:
    config = Config.from_mapping({"models": models or {}})
    return Catalog(config, FakeStore(), SettingsFile(tmp_path / "settings.json"))  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["ai/x", "ai/x:latest", "docker.io/ai/x:latest", ID, "ab" * 32])
def test_config_file_entry_found_by_any_name(tmp_path: Path, key: str) -> None:
    cat = catalog(tmp_path, {key: {"context_size": 1024}, "ai/other": {"context_size": 1}})
    assert cat.file_settings(model()).context_size == 1024


async def test_resolve_overlays_configure_settings_and_computes_kv(tmp_path: Path) -> None:
    cat = catalog(tmp_path, {"ai/x": {"context_size": 1024, "pinned": True}})
    await cat.settings.load()
    await cat.settings.update(ID, {"context_size": 512}, "ai/x:latest")
    files = await cat.resolve(ID)
    assert files.settings.context_size == 512  # _configure wins field by field
    assert files.settings.pinned is True  # the config file's other fields stay
    assert files.context_size == 2048
    assert files.name == "ai/x:latest"
    assert files.kv_bytes_per_token == 2 * (16 * 2 + 16 * 2) * 2  # layers * (k + v) * f16
    no_arch = catalog(tmp_path).files(model(arch_params={"n_layers": 2}))
    assert no_arch.kv_bytes_per_token is None


async def test_lookup_caches_hits_only_until_invalidated(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    store = cat.store
    assert isinstance(store, FakeStore)
    await cat.lookup("ai/x")
    await cat.lookup("ai/x")
    assert store.gets == 1
    for _ in range(2):
        with pytest.raises(ModelNotFound):
            await cat.lookup("ai/nope")
    assert store.gets == 3  # misses are asked every time (another process may add it)
    cat.invalidate()
    await cat.lookup("ai/x")
    assert store.gets == 4


@pytest.mark.parametrize("ref", [None, 3, "", "  ", "a\x00b", "x" * 2000])
async def test_lookup_rejects_non_references(tmp_path: Path, ref: object) -> None:
    with pytest.raises(InvalidRequest):
        await catalog(tmp_path).lookup(ref)


def test_a_context_size_that_only_echoes_the_gguf_is_not_a_choice() -> None:
    """Docker's package copies the trained context into the config: the capped default applies."""
    from modelrunner.server.catalog import chosen_context_size

    assert chosen_context_size(model()) == 2048
    assert chosen_context_size(model(config={"context_size": 4096})) is None
    assert chosen_context_size(model(config={})) is None
