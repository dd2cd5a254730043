"""The backend seam: what differs between inference engines, behind one small interface.

The supervisor's policy (LRU, TTL, pins, the memory budget, crash restarts, admission) is the same
for every engine; what is not lives in a ``Backend``: which artifact formats and request modes it
serves, whether it is installed (and the words ``/engines/status`` shows), the command line of a
runner (which must bind the Unix socket it is given: runners are reachable by the daemon's user
only), the name its process has in error messages, and whether it saves a slot's KV cache.
Readiness is the same contract for all: ``GET /health`` over the socket answers 200 once the model
is loaded (``process.ChildProcess.wait_ready``).

Two implementations: ``llamacpp.LlamaCpp`` (GGUF) and ``mlxlm.Mlx`` (safetensors in MLX's layout).
A third (vLLM, SGLang) is one more module implementing this protocol, added to
``default_backends``; docs/architecture.md says how.  Knows nothing of HTTP routes or OCI.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from modelrunner.config import RunnersConfig
from modelrunner.errors import InvalidRequest
from modelrunner.runners.model import Mode, ModelFiles

if TYPE_CHECKING:
    from modelrunner.runners.kvcache import KVCache
    from modelrunner.runners.runner import Runner


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """Whether a backend can run here, as ``GET /engines/status`` and ``engine status`` show it."""

    backend: str
    installed: bool
    version: str = ""
    detail: str = ""  # how it was found, or what to do when it is missing
    broken: bool = False  # installed but unusable (Docker's "Error: …")

    @property
    def text(self) -> str:
        """Docker's status words: ``Running: …``, ``Not Installed: …`` or ``Error: …``."""
        if self.installed:
            return f"Running: {self.backend} {self.version} ({self.detail})".replace(" ()", "")
        return f"{'Error' if self.broken else 'Not Installed'}: {self.detail}"


class Backend(Protocol):
    """One inference engine; see the module docstring."""

    @property
    def name(self) -> str:
        """Its name in routes (``/engines/<name>/v1/…``), ps and the metrics: ``llama.cpp``."""
        ...

    @property
    def process(self) -> str:
        """What its runner process is called in errors: ``llama-server``, ``mlx_lm.server``."""
        ...

    @property
    def formats(self) -> frozenset[str]:
        """The artifact formats it runs (the config's ``format``): ``gguf``, ``safetensors``."""
        ...

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The request modes it serves; others are refused with a 400 before any load."""
        ...

    @property
    def native_apis(self) -> frozenset[str]:
        """API families its server answers itself (``openai``, ``anthropic``); the daemon
        translates the others onto its OpenAI chat completions."""
        ...

    @property
    def grammar(self) -> bool:
        """Whether its chat completions take a GBNF ``grammar``: what holds an answer to a
        forced tool call (without one, such a request is refused with a 400)."""
        ...

    @property
    def saves_kv(self) -> bool:
        """Whether a planned stop can save its slots' prompt cache (runners/kvcache.py)."""
        ...

    def check(self, config: RunnersConfig) -> None:
        """Refuse config it cannot run with (ConfigError): at start and on every reload."""
        ...

    async def status(self, config: RunnersConfig) -> EngineStatus:
        """Whether it is installed here (looked up once, or again while it is missing)."""
        ...

    async def command(self, runner: Runner, config: RunnersConfig, kv: KVCache) -> list[str]:
        """The argv of *runner*, bound to ``runner.socket_path``; raises when not installed
        (``BinaryNotFound``, whose message names the install command) or for bad flags."""
        ...


class Backends:
    """The backends this daemon has, by name, and which one runs a model."""

    def __init__(self, backends: Iterable[Backend]) -> None:
        self._by_name: dict[str, Backend] = {b.name: b for b in backends}

    def __getitem__(self, name: str) -> Backend:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._by_name.values())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def for_format(self, fmt: str) -> Backend | None:
        for backend in self._by_name.values():
            if fmt in backend.formats:
                return backend
        return None

    def for_files(self, files: ModelFiles, mode: Mode) -> Backend:
        """The backend of *files*; InvalidRequest for a format none runs or a mode it lacks."""
        backend = self.for_format(files.format)
        if backend is None:
            runs = ", ".join(f"{b.name} ({'/'.join(sorted(b.formats))})" for b in self)
            raise InvalidRequest(
                f"model {files.name!r} is in {files.format or 'an unknown'!s} format, which no "
                f"backend here runs ({runs})"
            )
        if mode not in backend.modes:
            raise InvalidRequest(
                f"model {files.name!r} runs on the {backend.name} backend, which has no {mode} "
                f"mode (it serves: {', '.join(backend.modes)}); use a GGUF model for {mode}"
            )
        return backend


def default_backends(env: Mapping[str, str]) -> Backends:
    """llama.cpp and MLX, in that order (a format both ran would go to the first)."""
    from modelrunner.runners.llamacpp import LlamaCpp
    from modelrunner.runners.mlxlm import Mlx

    return Backends([LlamaCpp(env), Mlx(env)])
