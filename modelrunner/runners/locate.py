"""Asking the chosen llama-server what it is: version and backend.

Which binary is the engine's decision (``runners/engine/choose.py``: candidates in order, each
proven by a probe); this module describes the one chosen.  Version and backend come from
``--version`` and ``--list-devices``, run as subprocesses; so does the CPU variant a portable
build picked on this machine (ggml logs the module it loads while listing the devices, at
``-lv 4``).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelrunner.runners.engine.choose import choose
from modelrunner.runners.process import run_capture


@dataclass(frozen=True, slots=True)
class BinaryInfo:
    path: Path
    version: str
    backend: str  # cpu, metal, vulkan, cuda… (from --list-devices)
    tried: tuple[str, ...]
    source: str = ""  # how it was chosen: "PATH (…)", "native build (…)", "LLAMA_SERVER_PATH=…"
    probe: str = ""  # the probe's verdict on this machine
    flags: frozenset[str] | None = None  # what its --help lists (None: unknown)
    # The CPU module a portable build loaded here (``haswell``, ``icelake``…); None when the
    # binary has its CPU kernels built in (a native build) or loads no module by that name.
    cpu_variant: str | None = None


_VERSION = re.compile(r"version:\s*(.+)")
# ggml's loader, once per backend module it loads (ggml-backend-reg.cpp, load_backend):
# ``load_backend: loaded CPU backend from /opt/engine/bin/libggml-cpu-icelake.so``
_CPU_LOADED = re.compile(r"loaded CPU backend from \S*?libggml-cpu(?:-([\w.]+?))?\.so\b")
_DEVICE = re.compile(r"^\s{2}(\w+?)\d*:\s", re.M)


def parse_version(output: str) -> str:
    """``version: 0.1.0-dev (build 1, commit 7e4c0a9)`` -> the part after ``version:``."""
    m = _VERSION.search(output)
    if m:
        return m.group(1).strip()
    first = output.strip().splitlines()
    return first[0].strip() if first else "unknown"


_FLAG = re.compile(r"(?<![\w`-])(--?[a-zA-Z][\w-]*)")


def parse_flags(help_output: str) -> frozenset[str] | None:
    """The options a ``--help`` lists (lines that start with one), None when it lists none."""
    found = set()
    for line in help_output.splitlines():
        if line[:1] == "-":
            found.update(_FLAG.findall(line))
    return frozenset(found) or None


def parse_backend(devices_output: str, system: str = sys.platform) -> str:
    """The first device kind --list-devices reports (Metal, Vulkan, CUDA…), else ``cpu``."""
    m = _DEVICE.search(devices_output.split("Available devices:", 1)[-1])
    if m:
        return m.group(1).lower()
    return "cpu"


def parse_cpu_variant(output: str) -> str | None:
    """The CPU variant ggml says it loaded (``icelake``), ``cpu`` for a single unnamed module,
    None when no CPU module was loaded (its kernels are linked in)."""
    m = _CPU_LOADED.search(output)
    if m is None:
        return None
    return m.group(1) or "cpu"


async def describe(
    path: Path, tried: tuple[str, ...], source: str = "", probe: str = ""
) -> BinaryInfo:
    """Run the binary to learn its version and backend (subprocesses, never blocking the loop)."""
    (_, version_out), (_, devices_out), (rc, help_out), (_, loaded_out) = await asyncio.gather(
        run_capture([str(path), "--version"]),
        run_capture([str(path), "--list-devices"]),
        run_capture([str(path), "--help"]),
        # ggml names the CPU module it loads only at log verbosity 4 and up, and only if the
        # verbosity is parsed before --list-devices runs; apart, so a binary without -lv still
        # reports its backend above.
        run_capture([str(path), "-lv", "4", "--list-devices"]),
    )
    flags = parse_flags(help_out) if rc == 0 else None
    return BinaryInfo(
        path,
        parse_version(version_out),
        parse_backend(devices_out),
        tried,
        source,
        probe,
        flags,
        parse_cpu_variant(loaded_out),
    )


async def locate(
    configured: Path | None, env: Mapping[str, str] | None = None, *, engine: str = "auto"
) -> BinaryInfo:
    """Choose the binary (the first that passes the probe here) and describe it."""
    choice = await choose(configured, env, engine=engine)
    verdict = choice.verdict
    probe = f"{'passed' if verdict.ok else 'failed'}: {verdict.reason}"
    return await describe(choice.path, choice.tried, choice.source, probe)
