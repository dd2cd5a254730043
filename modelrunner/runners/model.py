"""What a runner is started from: a model's files and settings, and the request mode.

Plain data shared by the argv builder, the memory estimate and the supervisor; no I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from modelrunner.config import ModelSettings

Mode = Literal["completion", "embedding", "reranking"]
MODES: tuple[Mode, ...] = get_args(Mode)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelFiles:
    """One model as the runners see it: paths from the store plus effective settings."""

    id: str  # the store's model id (sha256:<hex>); with the mode it keys a runner
    name: str  # display reference, for ps and logs
    # The artifact's format, which picks the backend (runners/backend.py): "gguf" -> llama.cpp,
    # "safetensors" -> MLX.
    format: str = "gguf"
    gguf_path: Path | None = None  # a GGUF's first shard: what llama-server gets
    model_dir: Path | None = None  # a safetensors model's directory: what mlx_lm gets
    mmproj_path: Path | None = None
    chat_template_path: Path | None = None
    context_size: int | None = None  # the artifact's configured context, if any
    trained_context: int | None = None  # <arch>.context_length from the GGUF header
    estimated_bytes: int = 0  # weights, for the memory budget
    # KV cache bytes per token of context (2 * layers * kv width * element size), from the GGUF
    # header; None = unknown, memory.py then guesses from the weights.
    kv_bytes_per_token: int | None = None
    sliding_window: int | None = None  # <arch>.attention.sliding_window: an SWA model
    settings: ModelSettings = field(default_factory=ModelSettings)
    # The --pooling an embedding runner gets when its flags name none (runners/pooling.py);
    # None = the GGUF's own (or unknown) pooling.
    pooling: str | None = None


ResolveFn = Callable[[str], Awaitable[ModelFiles]]
