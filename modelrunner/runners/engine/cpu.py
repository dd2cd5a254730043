"""What this CPU can execute, read once from the OS, and what a SIGILL says about a binary.

Pure parsing (``parse_flags``, ``missing``, ``tag``) is apart from the one blocking read
(``read_flags``: /proc/cpuinfo or sysctl), so the tables can be tested anywhere.  Knows nothing of
llama-server beyond the names its builds are compiled for.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass

# The instruction sets ggml's CPU kernels are compiled for, strongest last, as /proc/cpuinfo
# names them.  A wheel built on a newer CPU uses the later ones; a machine without them SIGILLs.
X86_FEATURES = (
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
)
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve", "sme")

# macOS sysctl names -> the Linux names above (machdep.cpu.* on Intel, hw.optional.* on arm64).
_MAC_NAMES = {
    "sse4.2": "sse4_2",
    "avx1.0": "avx",
    "f16c": "f16c",
    "fma": "fma",
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "feat_dotprod": "asimddp",
    "feat_i8mm": "i8mm",
    "neon": "asimd",
}

# llama-server's `system_info` names for what its CPU backend was compiled with.
_SYSTEM_INFO_NAMES = {
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}


@dataclass(frozen=True, slots=True)
class CpuInfo:
    machine: str  # x86_64, arm64…
    model: str
    flags: frozenset[str]

    @property
    def _table(self) -> tuple[str, ...]:
        return ARM_FEATURES if self.machine in ("arm64", "aarch64") else X86_FEATURES

    @property
    def relevant(self) -> tuple[str, ...]:
        """The features that decide which ggml kernels can run, in a fixed order."""
        return tuple(f for f in self._table if f in self.flags)

    @property
    def lacking(self) -> tuple[str, ...]:
        return tuple(f for f in self._table if f not in self.flags)

    def tag(self) -> str:
        """``x86_64-avx2-1a2b3c``: the strongest level plus a hash of every relevant flag, so
        a native build is kept per CPU kind and never reused on a weaker one."""
        digest = hashlib.sha256(" ".join(self.relevant).encode()).hexdigest()[:6]
        best = self.relevant[-1] if self.relevant else "base"
        return f"{self.machine}-{best.replace('_', '')}-{digest}"


def parse_flags(cpuinfo: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo's first processor (``flags`` or ``Features``)."""
    model, flags = "", frozenset[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def parse_sysctl(output: str) -> frozenset[str]:
    """``hw.optional.arm.FEAT_DotProd: 1`` / ``machdep.cpu.features: FPU … AVX2`` -> names."""
    found: set[str] = set()
    for line in output.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key.startswith("machdep.cpu"):
            for word in value.lower().split():
                if word in _MAC_NAMES:
                    found.add(_MAC_NAMES[word])
        elif value == "1":
            name = key.rsplit(".", 1)[-1].lower()
            if name in _MAC_NAMES:
                found.add(_MAC_NAMES[name])
    return frozenset(found)


@functools.cache
def read_flags() -> CpuInfo:
    """This machine's CPU; blocking (a file read or a sysctl run): call it in a thread."""
    machine = platform.machine().lower() or "unknown"
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                [
                    "sysctl",
                    "machdep.cpu.brand_string",
                    "machdep.cpu.features",
                    "machdep.cpu.leaf7_features",
                    "hw.optional",
                ],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        brand = re.search(r"machdep\.cpu\.brand_string:\s*(.+)", out)
        return CpuInfo(machine, brand.group(1).strip() if brand else "", parse_sysctl(out))
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model, flags = parse_flags(f.read())
    except OSError:
        model, flags = "", frozenset()
    return CpuInfo(machine, model, flags)


def compiled_for(lines: Iterable[str]) -> frozenset[str]:
    """The instruction sets a llama-server says it was built with (its ``system_info`` line:
    ``CPU : SSE3 = 1 | AVX = 1 | AVX512 = 1 | …``), in /proc/cpuinfo's names."""
    found: set[str] = set()
    for line in lines:
        for name, on in re.findall(r"\b([A-Z0-9_]+) = (\d)", line):
            if on == "1" and name in _SYSTEM_INFO_NAMES:
                found.add(_SYSTEM_INFO_NAMES[name])
    return frozenset(found)


def missing(cpu: CpuInfo, log_lines: Iterable[str] = ()) -> tuple[str, ...]:
    """What a binary killed by SIGILL most likely needs and this CPU lacks.

    Exact when the binary printed what it was built with; otherwise the strong instruction sets
    this CPU does not have (builds for newer CPUs use them: AVX-512, VNNI, AMX).
    """
    built = compiled_for(log_lines)
    if built:
        gap = tuple(f for f in X86_FEATURES if f in built and f not in cpu.flags)
        if gap:
            return gap
    strong = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "amx_int8", "i8mm", "sve")
    return tuple(f for f in cpu.lacking if f in strong)


def sigill_reason(binary: str, cpu: CpuInfo, log_lines: Iterable[str] = ()) -> str:
    """The one sentence that names the cause of a SIGILL and its fix."""
    gap = missing(cpu, log_lines)
    needs = f" (this CPU lacks {', '.join(gap)})" if gap else ""
    return (
        f"llama-server {binary} was killed by SIGILL: it uses CPU instructions this machine "
        f"does not have{needs}; run `modelrunner engine install` to get one that runs here"
    )
