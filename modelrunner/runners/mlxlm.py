"""The MLX backend: safetensors models served by ``mlx_lm`` (one implementation of
``runners/backend.py``).

The runner is ``mlx_server.py`` run as a script by the Python that has mlx and mlx-lm (the
daemon's own unless ``runners.mlx_python``): mlx_lm's request handler on the runner's Unix socket,
the one model of its command line loaded before the socket exists (see that module for why not
``python -m mlx_lm.server``).  Whether MLX is installed is asked of that Python in a subprocess
(``import mlx.core``; importing it here would block the loop for seconds and load MLX into the
daemon); a positive answer is kept, a negative one asked again after ``RECHECK_S`` so that an
install is seen without a restart.  Completion only: mlx_lm.server has no embeddings or rerank.
It keeps its own prompt cache in memory; nothing is saved across loads (``saves_kv`` False).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from modelrunner.config import RunnersConfig
from modelrunner.errors import BackendNotInstalled, InvalidRequest
from modelrunner.runners.args import flag_key
from modelrunner.runners.backend import EngineStatus
from modelrunner.runners.model import Mode
from modelrunner.runners.process import run_capture

if TYPE_CHECKING:
    from modelrunner.runners.kvcache import KVCache
    from modelrunner.runners.runner import Runner

NAME = "mlx"
LAUNCHER = Path(__file__).with_name("mlx_server.py")
RECHECK_S = 10.0
PROBE_TIMEOUT_S = 30.0
# Imports mlx.core (the native library: the real test) but not mlx_lm (transformers: seconds).
PROBE = (
    "import json, importlib.util as u, importlib.metadata as m; import mlx.core; "
    "assert u.find_spec('mlx_lm'), 'mlx_lm'; "
    "print(json.dumps([m.version('mlx'), m.version('mlx-lm')]))"
)
# mlx_lm.server's options a model's runtime flags may set: sampling defaults and cache sizes, no
# paths, no listener, no code (--trust-remote-code), no adapters or draft models.
_ALLOWED = """
    --temp --top-p --top-k --min-p --max-tokens --chat-template-args --decode-concurrency
    --prompt-concurrency --prefill-step-size --prompt-cache-size --prompt-cache-bytes --kv-bits
    --kv-group-size --quantized-kv-start --log-level
"""
ALLOWED_FLAGS = frozenset(_ALLOWED.split())


def install_hint(python: Path, platform: str = sys.platform) -> str:
    """The command that installs the MLX backend into *python*."""
    mlx = "mlx" if platform == "darwin" else "mlx[cpu]"
    return f"pip install 'modelrunner[mlx]' (or: {python} -m pip install '{mlx}' mlx-lm)"


def validate_flags(flags: tuple[str, ...]) -> tuple[str, ...]:
    """A model's runtime flags for mlx_lm.server: the allowlist, and no paths."""
    for token in flags:
        key = flag_key(token)
        if key is not None and key not in ALLOWED_FLAGS:
            raise InvalidRequest(
                f"runtime flag {key!r} is not allowed for backend 'mlx' (allowed: "
                f"{', '.join(sorted(ALLOWED_FLAGS))})"
            )
        if "/" in token or "\\" in token:
            raise InvalidRequest(f"invalid runtime flag {token!r}: paths are not allowed")
    return flags


class Mlx:
    """mlx_lm on a Unix socket: completion (chat and text), safetensors only."""

    name = NAME
    process = "mlx_lm.server"
    formats = frozenset({"safetensors"})
    modes: tuple[Mode, ...] = ("completion",)
    native_apis = frozenset({"openai"})  # chat and text completions only
    grammar = False  # mlx_lm.server ignores one: no forced tool calls
    saves_kv = False

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._found: EngineStatus | None = None
        self._missing_until = 0.0
        self._missing: EngineStatus | None = None
        self._lock = asyncio.Lock()

    def check(self, config: RunnersConfig) -> None:
        return None  # nothing in runners.* is MLX's but the Python (checked when used)

    @staticmethod
    def python(config: RunnersConfig) -> Path:
        return (config.mlx_python or Path(sys.executable)).expanduser()

    async def status(self, config: RunnersConfig) -> EngineStatus:
        async with self._lock:
            if self._found is not None:
                return self._found
            if self._missing is not None and time.monotonic() < self._missing_until:
                return self._missing
            status = await self._probe(self.python(config))
            if status.installed:
                self._found = status
            else:
                self._missing, self._missing_until = status, time.monotonic() + RECHECK_S
            return status

    async def _probe(self, python: Path) -> EngineStatus:
        hint = install_hint(python)
        try:
            rc, out = await run_capture([str(python), "-c", PROBE], timeout_s=PROBE_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            return EngineStatus(self.name, False, detail=f"cannot run {python} ({e}); {hint}")
        last = out.strip().splitlines()[-1] if out.strip() else ""
        if rc == 0:
            try:
                mlx, mlx_lm = json.loads(last)
            except (ValueError, TypeError):
                mlx, mlx_lm = "unknown", "unknown"
            return EngineStatus(self.name, True, str(mlx), f"mlx-lm {mlx_lm}; {python}")
        why = "mlx-lm is missing" if "mlx_lm" in last else f"mlx does not import ({last[-200:]})"
        return EngineStatus(self.name, False, detail=f"{why} in {python}; install: {hint}")

    async def command(self, runner: Runner, config: RunnersConfig, kv: KVCache) -> list[str]:
        files = runner.model
        if files.model_dir is None:
            raise InvalidRequest(f"model {files.name!r} has no model directory to give mlx_lm")
        flags = validate_flags(files.settings.runtime_flags)
        status = await self.status(config)
        if not status.installed:
            raise BackendNotInstalled(
                f"model {files.name!r} needs the MLX backend, which is not installed: "
                f"{status.detail}"
            )
        python = self.python(config)
        return [
            str(python),
            str(LAUNCHER),
            "--socket",
            str(runner.socket_path),
            "--model",
            str(files.model_dir),
            *flags,
        ]
