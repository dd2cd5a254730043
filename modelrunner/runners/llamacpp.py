"""The llama.cpp backend: GGUF models served by ``llama-server`` (one implementation of
``runners/backend.py``).

Which binary runs is the engine's choice (``runners/engine``, ``locate.py``: looked up once, then
cached); its argv is Docker's (``args.py``) plus the prompt-cache flags (``kvcache.py``), and it
binds the runner's Unix socket itself (``--host <path>.sock``).  Knows nothing of HTTP or OCI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from modelrunner.config import RunnersConfig
from modelrunner.errors import BinaryNotFound
from modelrunner.runners.args import MODE_FLAGS, build_argv, validate_llama_args
from modelrunner.runners.backend import EngineStatus
from modelrunner.runners.locate import BinaryInfo, locate
from modelrunner.runners.model import Mode

if TYPE_CHECKING:
    from modelrunner.runners.kvcache import KVCache
    from modelrunner.runners.runner import Runner

log = structlog.get_logger(__name__)

NAME = "llama.cpp"


class LlamaCpp:
    """llama-server: every mode (completion, embedding, reranking), GGUF only, saves KV slots."""

    name = NAME
    process = "llama-server"
    formats = frozenset({"gguf"})
    modes: tuple[Mode, ...] = tuple(MODE_FLAGS)
    native_apis = frozenset({"openai", "anthropic"})  # /v1/messages is llama-server's own
    grammar = True  # forced tool calls are held to one by it
    saves_kv = True

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._binary: BinaryInfo | None = None
        self._lock = asyncio.Lock()

    def check(self, config: RunnersConfig) -> None:
        validate_llama_args(config.llama_args)

    async def binary(self, config: RunnersConfig) -> BinaryInfo:
        """The llama-server in use, its version and device (looked up once)."""
        async with self._lock:
            if self._binary is None:
                self._binary = await locate(
                    config.llama_server_path, self._env, engine=config.engine
                )
                log.info(
                    "runner.binary",
                    path=str(self._binary.path),
                    version=self._binary.version,
                    backend=self._binary.backend,
                    chosen=self._binary.source,
                )
            return self._binary

    async def status(self, config: RunnersConfig) -> EngineStatus:
        try:
            info = await self.binary(config)
        except BinaryNotFound as e:
            return EngineStatus(self.name, False, detail=e.message, broken=True)
        # A portable build names the CPU module ggml chose here: "(cpu zen4; …)".
        device = f"{info.backend} {info.cpu_variant}" if info.cpu_variant else info.backend
        return EngineStatus(self.name, True, info.version, f"{device}; {info.source}")

    async def command(self, runner: Runner, config: RunnersConfig, kv: KVCache) -> list[str]:
        binary = await self.binary(config)
        files = runner.model
        argv = build_argv(
            binary.path, files, runner.mode, runner.socket_path, config, supported=binary.flags
        )
        return argv + kv.args(runner, files, binary, argv)
