"""The portable engine build: its flags and cache entry, where `choose` finds it, the CPU
variant ggml reports loading, and extracting the sdist on Pythons without tarfile filters."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from modelrunner.config import Config
from modelrunner.runners.engine import build
from modelrunner.runners.engine.choose import candidates
from modelrunner.runners.engine.cpu import CpuInfo, read_flags
from modelrunner.runners.engine.source import native_binary, portable_binary
from modelrunner.runners.locate import parse_cpu_variant

CPU = CpuInfo("x86_64", "Test CPU", frozenset({"avx", "avx2", "fma", "f16c"}))


def fake_binary(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / "llama-server"
    p.write_text("#!/bin/sh\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


class TestPlan:
    def test_portable_is_one_entry_per_machine_kind_with_every_cpu_variant(
        self, tmp_path: Path
    ) -> None:
        env = {"MODEL_RUNNER_CACHE": str(tmp_path)}
        p = build.plan(CPU, env, portable=True)
        assert p.final.name == "llama.cpp-11434.0.0-x86_64-portable"
        for flag in ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"):
            assert flag in p.flags
        # Backend modules need shared libraries, found beside the binary wherever it moves.
        assert "-DBUILD_SHARED_LIBS=ON" in p.flags
        assert "-DCMAKE_INSTALL_RPATH=$ORIGIN" in p.flags
        assert "-DGGML_NATIVE=ON" not in p.flags

    def test_native_stays_per_cpu_and_static(self, tmp_path: Path) -> None:
        env = {"MODEL_RUNNER_CACHE": str(tmp_path)}
        p = build.plan(CPU, env, portable=False)
        assert p.final == native_binary(CPU, env).parent.parent
        assert "-DGGML_NATIVE=ON" in p.flags
        assert "-DBUILD_SHARED_LIBS=OFF" in p.flags

    def test_the_cpu_modules_a_build_ships(self, tmp_path: Path) -> None:
        for name in ("libggml-cpu-haswell.so", "libggml-cpu-icelake.so", "libggml-base.so.0"):
            (tmp_path / name).write_bytes(b"")
        assert sorted(build.cpu_modules(tmp_path)) == ["haswell", "icelake"]


class TestChoose:
    def test_a_portable_build_is_found_after_the_native_one(self, tmp_path: Path) -> None:
        env = {"PATH": str(tmp_path), "MODEL_RUNNER_CACHE": str(tmp_path / "cache")}
        machine = read_flags().machine
        portable = fake_binary(portable_binary(machine, env).parent)
        found, _ = candidates(None, env=env, system="linux")
        assert found[0].path == portable
        assert found[0].source.startswith("portable build")
        native = fake_binary(native_binary(read_flags(), env).parent)
        found, _ = candidates(None, env=env, system="linux")
        assert [c.path for c in found[:2]] == [native, portable]


class TestCpuVariant:
    def test_the_module_ggml_loaded(self) -> None:
        out = (
            "load_backend: loaded CPU backend from /opt/modelrunner/engine/bin/"
            "libggml-cpu-icelake.so\nAvailable devices:\n  (none)\n"
        )
        assert parse_cpu_variant(out) == "icelake"

    def test_a_single_unnamed_cpu_module(self) -> None:
        out = "load_backend: loaded CPU backend from /w/bin/libggml-cpu.so\n"
        assert parse_cpu_variant(out) == "cpu"

    def test_kernels_linked_in_report_none(self) -> None:
        assert parse_cpu_variant("Available devices:\n  (none)\n") is None


def _tar(tmp_path: Path, *members: tarfile.TarInfo) -> Path:
    path = tmp_path / "src.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def _file(name: str, data: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = data
    return info


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


class TestSafeMember:
    """What Debian 12's Python 3.11.2 (no tarfile filters) is allowed to extract."""

    @pytest.mark.parametrize(
        "member",
        [_file("t/llama.cpp/CMakeLists.txt"), _link("t/a/lib.so", "lib.so.0"), _link("t/b", "a/x")],
    )
    def test_admits_the_tree(self, member: tarfile.TarInfo) -> None:
        assert build._safe_member(member)

    @pytest.mark.parametrize(
        "member",
        [
            _file("/etc/passwd"),
            _file("t/../../escape"),
            _link("t/evil", "/etc/shadow"),
            _link("t/a/evil", "../../../escape"),
        ],
    )
    def test_refuses_what_leaves_the_destination(self, member: tarfile.TarInfo) -> None:
        assert not build._safe_member(member)

    def test_extract_without_filters_still_finds_the_tree(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        src = build.LLAMA_CPP
        top = src.tree.split("/")[0]
        archive = _tar(tmp_path, _file(f"{src.tree}/CMakeLists.txt"), _file(f"{top}/../evil"))
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        tree = build._extract(archive, tmp_path / "out", src)
        assert (tree / "CMakeLists.txt").is_file()
        assert not (tmp_path / "evil").exists()


def test_the_keys_file_comes_from_the_environment() -> None:
    """MODEL_RUNNER_API_KEYS_FILE: what a mounted Kubernetes Secret is pointed at."""
    config = Config.load(None, {"HOME": "/h", "MODEL_RUNNER_API_KEYS_FILE": "/run/secrets/k"})
    assert config.server.api_keys_file == Path("/run/secrets/k")


def test_an_explicit_path_we_may_not_enter_is_named_not_a_crash(tmp_path: Path) -> None:
    """The image's first build had its engine under a 0700 directory: stat raised
    PermissionError, and /version answered 500 instead of saying where it looked."""
    from modelrunner.errors import BinaryNotFound

    locked = tmp_path / "locked"
    fake_binary(locked / "bin")
    locked.chmod(0)
    try:
        if (locked / "bin").exists():  # root reads through any mode
            pytest.skip("running as a user whom directory modes do not stop")
        with pytest.raises(BinaryNotFound, match="cannot look there: Permission denied"):
            candidates(locked / "bin" / "llama-server", env={})
    finally:
        locked.chmod(0o700)
