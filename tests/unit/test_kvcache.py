"""The prompt-cache directory's rules without a runner: keys, the commit point, the sweep of what
a killed save leaves, the size bound, and removal with a model."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from modelrunner.config import Config, KVCacheConfig, ModelSettings
from modelrunner.errors import ConfigError
from modelrunner.runners.kvcache import CacheKey, KVCache, SaveFailed, enabled_for, make_key
from modelrunner.runners.locate import BinaryInfo
from modelrunner.runners.model import ModelFiles

BINARY = BinaryInfo(Path("/e/llama-server"), "1.0 (build 1)", "cpu", ())
ARGV = ["llama-server", "--model", "m.gguf", "--ctx-size", "4096", "--jinja"]


def files(model_id: str = "sha256:aa", **kw: object) -> ModelFiles:
    return ModelFiles(id=model_id, name="m", gguf_path=Path("m.gguf"), **kw)  # type: ignore[arg-type]


def key(model_id: str = "sha256:aa", context: int = 4096) -> CacheKey:
    argv = [*ARGV]
    argv[argv.index("--ctx-size") + 1] = str(context)
    return make_key(files(model_id), "completion", argv, BINARY)


def cache(tmp_path: Path, **kw: object) -> KVCache:
    kv = KVCache(KVCacheConfig(path=tmp_path / "kv", **kw))  # type: ignore[arg-type]
    kv.files.sweep()
    return kv


def fake_save(
    kv: KVCache, k: CacheKey, nonce: str, data: bytes, slot: int = 0
) -> dict[str, object]:
    """What llama-server leaves after `POST /slots/N?action=save`: a .part and its answer."""
    name = f"{k.digest}-{nonce}-s{slot}.bin"
    (kv.dir / (name + ".part")).write_bytes(data)
    return {"slot": slot, "file": name, "n_saved": 10, "n_written": len(data)}


class TestKey:
    def test_every_cache_affecting_setting_changes_the_digest(self) -> None:
        """Model, context, flags, engine and mode each give another key: never a foreign restore."""
        base = key()
        others = [
            key(model_id="sha256:bb"),
            key(context=2048),
            dataclasses.replace(base, flags=("--cache-type-k", "q8_0")),
            dataclasses.replace(base, engine="2.0 /e/llama-server"),
            dataclasses.replace(base, mode="embedding"),
            dataclasses.replace(base, swa_full=True),
        ]
        assert len({base.digest, *(o.digest for o in others)}) == 1 + len(others)
        assert key().digest == base.digest

    def test_the_whole_command_line_is_keyed_but_the_socket_and_paths(self) -> None:
        """LLAMA_ARGS (live on reload) change the key; a new socket or model path does not."""
        base = make_key(files(), "completion", [*ARGV, "--host", "/r/a.sock"], BINARY)
        moved = [*ARGV, "--host", "/r/b.sock"]
        moved[moved.index("--model") + 1] = "/other/store/m.gguf"
        assert make_key(files(), "completion", moved, BINARY) == base
        quantized = [*ARGV, "--host", "/r/a.sock", "--cache-type-k", "q8_0"]
        assert make_key(files(), "completion", quantized, BINARY).digest != base.digest

    def test_the_context_is_the_last_ctx_size_of_the_argv(self) -> None:
        argv = [*ARGV, "-c", "1024"]
        assert make_key(files(), "completion", argv, BINARY).context_size == 1024

    def test_an_swa_model_runs_with_a_full_size_cache(self, tmp_path: Path) -> None:
        """Gemma 3's sliding window: without --swa-full a restored slot is never reused."""
        from modelrunner.runners.runner import Runner

        kv = cache(tmp_path)
        runner = Runner(("sha256:aa", "completion"), files(), tmp_path / "s.sock", tmp_path / "l")
        extra = kv.args(runner, files(sliding_window=512), BINARY, ARGV)
        assert extra == ["--slot-save-path", str(kv.dir), "--swa-full"]
        assert runner.kv_key is not None
        assert runner.kv_key.swa_full
        assert kv.args(runner, files(), BINARY, ARGV) == ["--slot-save-path", str(kv.dir)]
        embedder = Runner(("sha256:aa", "embedding"), files(), tmp_path / "e.sock", tmp_path / "l")
        assert kv.args(embedder, files(sliding_window=512), BINARY, ARGV) == []
        assert embedder.kv_key is None

    def test_the_per_model_setting_wins(self) -> None:
        on, off = KVCacheConfig(enabled=True), KVCacheConfig(enabled=False)
        assert enabled_for(on, files())
        assert not enabled_for(off, files())
        assert not enabled_for(on, files(settings=ModelSettings(kv_cache=False)))
        assert enabled_for(off, files(settings=ModelSettings(kv_cache=True)))


class TestCommit:
    def test_a_save_becomes_visible_only_through_its_manifest(self, tmp_path: Path) -> None:
        kv = cache(tmp_path)
        k = key()
        row = fake_save(kv, k, "n1", b"x" * 100)
        tokens, size = kv.files.commit(k, [row])
        assert (tokens, size) == (10, 100)
        manifest = json.loads((kv.dir / f"{k.digest}.json").read_text())
        assert manifest["key"] == k.to_json()
        (slot,) = manifest["slots"]
        assert slot["sha256"] == hashlib.sha256(b"x" * 100).hexdigest()
        assert not list(kv.dir.glob("*.part"))
        kv.files.verify(slot)

    def test_a_new_save_replaces_the_old_entrys_files(self, tmp_path: Path) -> None:
        kv = cache(tmp_path)
        k = key()
        kv.files.commit(k, [fake_save(kv, k, "n1", b"old")])
        kv.files.commit(k, [fake_save(kv, k, "n2", b"new")])
        assert [p.name for p in kv.dir.glob("*.bin")] == [f"{k.digest}-n2-s0.bin"]

    def test_a_short_part_file_is_never_committed(self, tmp_path: Path) -> None:
        """Disk full: llama-server said it wrote more than is on disk."""
        kv = cache(tmp_path)
        k = key()
        row = fake_save(kv, k, "n1", b"abc")
        row["n_written"] = 4096
        with pytest.raises(SaveFailed):
            kv.files.commit(k, [row])
        assert not (kv.dir / f"{k.digest}.json").exists()

    @pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
    def test_a_damaged_slot_file_fails_verification(self, tmp_path: Path, damage: str) -> None:
        kv = cache(tmp_path)
        k = key()
        kv.files.commit(k, [fake_save(kv, k, "n1", b"abcdef")])
        (slot,) = json.loads((kv.dir / f"{k.digest}.json").read_text())["slots"]
        path = kv.dir / slot["file"]
        if damage == "truncate":
            path.write_bytes(b"abc")
        elif damage == "flip":
            path.write_bytes(b"abcdeX")
        else:
            path.unlink()
        with pytest.raises((SaveFailed, FileNotFoundError)):
            kv.files.verify(slot)


class TestSweep:
    def test_what_a_killed_save_leaves_is_deleted_and_committed_entries_stay(
        self, tmp_path: Path
    ) -> None:
        kv = cache(tmp_path)
        k, other = key(), key(model_id="sha256:bb")
        kv.files.commit(k, [fake_save(kv, k, "n1", b"kept")])
        fake_save(kv, k, "n2", b"half")  # killed while llama-server wrote
        (kv.dir / f"{other.digest}-n3-s0.bin").write_bytes(b"renamed, no manifest yet")
        (kv.dir / f".{other.digest}.json.tmp").write_text("{")
        assert kv.files.sweep() == 3
        assert sorted(p.name for p in kv.dir.iterdir()) == sorted(
            [f"{k.digest}.json", f"{k.digest}-n1-s0.bin"]
        )


class TestBound:
    def test_least_recently_used_entries_go_first_and_the_new_one_stays(
        self, tmp_path: Path
    ) -> None:
        kv = cache(tmp_path, max_bytes=3200)
        keys = [key(model_id=f"sha256:{i}") for i in range(3)]
        for i, k in enumerate(keys):
            kv.files.commit(k, [fake_save(kv, k, "n", b"x" * 1000)])
            os.utime(kv.dir / f"{k.digest}.json", (1000 + i, 1000 + i))
        os.utime(kv.dir / f"{keys[0].digest}.json", (2000, 2000))  # restored lately: recent
        kv.files.enforce_bound(keys[2].digest)
        left = {p.name.removesuffix(".json") for p in kv.dir.glob("*.json")}
        assert left == {keys[0].digest, keys[2].digest}

    def test_removal_follows_the_model(self, tmp_path: Path) -> None:
        kv = cache(tmp_path)
        a, a2, b = key("sha256:a"), key("sha256:a", context=1024), key("sha256:b")
        for k in (a, a2, b):
            kv.files.commit(k, [fake_save(kv, k, "n", b"data")])
        assert asyncio.run(kv.remove_model("sha256:a")) > 0
        assert {p.name for p in kv.dir.glob("*.json")} == {f"{b.digest}.json"}
        assert asyncio.run(kv.retain(["sha256:zzz"])) > 0
        assert not list(kv.dir.iterdir())
        assert asyncio.run(kv.disk_usage()) == 0


def test_config_keys() -> None:
    config = Config.from_mapping(
        {
            "runners": {"kv_cache": {"max_bytes": 1024, "enabled": False}},
            "models": {"ai/x": {"kv_cache": True}},
        },
        home=Path("/h"),
    )
    assert config.runners.kv_cache.max_bytes == 1024
    assert not config.runners.kv_cache.enabled
    assert config.runners.kv_cache.path == Path("/h/kvcache")
    assert config.models["ai/x"].kv_cache is True
    with pytest.raises(ConfigError, match=r"kv_cache\.nope"):
        Config.from_mapping({"runners": {"kv_cache": {"nope": 1}}})
