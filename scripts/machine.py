"""The machine line every benchmark writes: cores, CPU model and features, and the engine used."""

from __future__ import annotations

import os
import platform

from modelrunner.runners.engine.cpu import read_flags
from modelrunner.runners.locate import BinaryInfo


def cpu_line() -> str:
    """Cores, CPU model and the features the engine's choice depends on, and the OS."""
    cpu = read_flags()
    features = " ".join(cpu.relevant) or "-"
    return (
        f"{os.cpu_count()} cores, {cpu.model or platform.processor() or '?'} ({cpu.machine}: "
        f"{features}), {platform.system()}"
    )


def machine_line(engine: BinaryInfo) -> str:
    return (
        f"{cpu_line()}; llama-server {engine.version}, {engine.backend}, "
        f"chosen as {engine.source.split(' (')[0]}"
    )
