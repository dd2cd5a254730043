"""How much memory a runner needs (an estimate) and uses (psutil RSS, read in a thread).

The estimate is weights plus the KV cache for the context it will run with, plus a fixed margin
for compute buffers; it only has to rank and bound, not to be exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import psutil

from modelrunner.runners.model import ModelFiles

COMPUTE_MARGIN_BYTES = 64 * 1024 * 1024
F16_BYTES = 2


def kv_bytes_per_token(
    *,
    n_layers: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int | None = None,
    key_length: int | None = None,
    value_length: int | None = None,
    element_bytes: int = F16_BYTES,
) -> int:
    """KV cache bytes per token from GGUF header numbers (f16 cache, llama-server's default)."""
    head_dim = n_embd // max(1, n_head)
    kv_heads = n_head_kv or n_head
    k = (key_length or head_dim) * kv_heads
    v = (value_length or head_dim) * kv_heads
    return n_layers * (k + v) * element_bytes


def estimate_bytes(files: ModelFiles, context: int) -> int:
    """Weights + KV cache for *context* tokens + a margin; unknown KV width guessed from weights."""
    weights = max(0, files.estimated_bytes)
    per_token = files.kv_bytes_per_token
    if per_token is None:
        # Rough but monotonic: 7B Q4 (~3.8 GB) gives ~0.5 MB/token, close to its real f16 cache.
        per_token = weights // 8192
    tokens = context if context > 0 else (files.trained_context or 0)
    return weights + per_token * tokens + COMPUTE_MARGIN_BYTES


def _rss(pids: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


async def rss_bytes(pids: Iterable[int]) -> dict[int, int]:
    """Resident set size of each live pid (reads /proc, so off the event loop)."""
    return await asyncio.to_thread(_rss, list(pids))


async def total_memory_bytes() -> int:
    """Physical RAM of the machine."""
    vm = await asyncio.to_thread(psutil.virtual_memory)
    return int(vm.total)
