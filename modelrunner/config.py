"""
Settings in one place: defaults < YAML file < environment < flags.

Each component receives only its own frozen section (``Config.store``, ``Config.runners``…), never
the whole config.  Validation errors name the key path and where the bad value came from.  Nothing
here touches the network or starts anything; reading the YAML file is the only I/O.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from modelrunner.errors import ConfigError

DEFAULT_PORT = 12434


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSettings:
    """Per-model settings from the config file; the daemon also keeps its own on disk."""

    context_size: int | None = None
    runtime_flags: tuple[str, ...] = ()
    pinned: bool = False
    idle_ttl_s: float | None = None
    preload: bool = False
    kv_cache: bool | None = None  # keep its prompt cache across stops; None = runners.kv_cache


@dataclass(frozen=True, slots=True, kw_only=True)
class KVCacheConfig:
    """Prompt (KV) cache files kept across a runner's planned stops (``runners/kvcache.py``)."""

    enabled: bool = True
    path: Path | None = None  # None: "kvcache" beside runners.run_dir (the daemon's home)
    max_bytes: int = 4 * 1024**3  # least recently used entries go first past this
    # Kept free on the cache's disk; the daemon raises it to store.min_free_bytes.
    min_free_bytes: int = 64 * 1024 * 1024
    save_timeout_s: float = 5.0  # a stop waits at most this long for the save
    restore_timeout_s: float = 10.0
    # Conversations kept on disk per model (least recently used go first): each slot's cache is
    # saved before another conversation takes the slot, and restored when it comes back
    # (runners/kv_store.py).  0: only the slots a stop finds are kept, restored at the next load.
    conversations: int = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    path: Path = Path("~/.modelrunner/models")
    # Registries reached over plain HTTP besides localhost/127.0.0.1 (host[:port]).
    insecure_registries: tuple[str, ...] = ()
    # Free space kept on the store's disk after a pull, on top of the artifact's size.
    min_free_bytes: int = 64 * 1024 * 1024
    incomplete_max_age_s: float = 7 * 24 * 3600
    max_concurrent_pulls: int = 2
    registry_timeout_s: float = 30.0
    docker_config: Path = Path("~/.docker/config.json")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnersConfig:
    llama_server_path: Path | None = None
    engine: str = "auto"  # which llama-server: auto | native (our build only) | wheel
    llama_args: tuple[str, ...] = ()
    # The Python that has mlx and mlx-lm, for the MLX backend; None = the daemon's own.
    mlx_python: Path | None = None
    run_dir: Path = Path("~/.modelrunner/run")
    log_dir: Path = Path("~/.modelrunner/logs")
    max_loaded: int = 2
    memory_fraction: float | None = None  # e.g. 0.75 of total RAM; None = no memory budget
    default_context_size: int = 8192
    load_timeout_s: float = 60.0  # stall-based: no progress for this long fails the load
    health_interval_s: float = 0.05
    stop_grace_s: float = 10.0
    idle_ttl_s: float = 300.0
    max_in_flight: int = 4
    max_queue: int = 64
    queue_timeout_s: float = 120.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 2
    log_tail_lines: int = 200
    crash_backoff_s: float = 1.0
    crash_backoff_max_s: float = 30.0
    kv_cache: KVCacheConfig = field(default_factory=KVCacheConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    socket: Path = Path("~/.modelrunner/run/model-runner.sock")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 = no TCP listener
    allow_remote: bool = False
    max_body_bytes: int = 10 * 1024 * 1024
    body_timeout_s: float = 30.0  # a request body must arrive within this (slowloris): else 408
    origins: tuple[str, ...] = ()
    # Host names served over loopback besides localhost/127.0.0.1/[::1] (server/hosts.py: the
    # DNS-rebinding guard); beyond loopback, once set, the only names served but IP literals.
    allowed_hosts: tuple[str, ...] = ()
    disable_metrics: bool = False
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 600.0
    drain_timeout_s: float = 10.0
    # API keys for TCP (server/auth.py); never in a repr, a log line or an error message.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_file: Path | None = None  # one key a line; blank lines and '#' comments skipped
    allow_unauthenticated: bool = False  # a non-loopback host without keys (allow_remote: older)
    # Slow clients (server/header_guard.py): request headers must arrive within this (0 = no
    # limit), and at most this many connections may be mid-headers (the oldest is dropped).
    header_timeout_s: float = 10.0
    max_pending_header_connections: int = 256
    # An extra TCP listener for apps with Ollama's 11434 built in; 0 = off, so a real Ollama on
    # this machine is never clashed with.  Same host, same routes, same app as `port`.
    ollama_port: int = 0
    # Stored Responses-API answers (<home>/responses/): oldest dropped beyond either bound.
    responses_max_count: int = 1000
    responses_max_bytes: int = 100 * 1024 * 1024
    responses_ttl_s: float = 30 * 24 * 3600  # OpenAI keeps them 30 days
    request_log: bool = True  # GET /engines/requests keeps the last requests per model
    request_log_records: int = 10  # per model (Docker's 10)
    request_log_body_bytes: int = 256 * 1024  # of each request and answer kept; the rest is cut
    events_queue: int = 256  # events a GET /engines/events client may fall behind, then dropped
    # OpenAI inference requests served off the socket, without aiohttp (server/fastlane.py).
    fast_lane: bool = True
    # A stream whose tokens come faster than this is read at most once per this many ms (the
    # interval growing fourfold, up to 8x, while it stays that fast), so several tokens share a read
    # and a write (0: each as it comes).  Slower ones never wait.
    stream_coalesce_ms: float = 2.0
    # Threads that copy slow streams' tokens (a real model's, one per read) from runner to client
    # without waking the event loop per token (server/relay/pump.py); 0: the loop copies every one.
    stream_threads: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    home: Path = Path("~/.modelrunner")
    log_level: str = "info"
    store: StoreConfig = field(default_factory=StoreConfig)
    runners: RunnersConfig = field(default_factory=RunnersConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    models: Mapping[str, ModelSettings] = field(default_factory=dict)
    source: str = "defaults"  # where the config came from, for error messages

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Config:
        """Defaults, then the YAML file, then environment variables, then *overrides* (flags)."""
        env = os.environ if env is None else env
        home = Path(env.get("MODEL_RUNNER_HOME") or "~/.modelrunner").expanduser()
        explicit = path is not None
        path = Path(path).expanduser() if path is not None else home / "config.yaml"
        raw: dict[str, Any] = {}
        if path.exists():
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"{path}: cannot read config: {e}") from e
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{path}: the config file must be a mapping of settings")
            raw = loaded or {}
        elif explicit:
            raise ConfigError(f"{path}: config file not found")
        config = cls.from_mapping(raw, home=home, source=str(path))
        config = config.with_env(env)
        if overrides:
            config = cls.from_mapping(overrides, base=config, source="command line")
        return config

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        base: Config | None = None,
        home: Path | None = None,
        source: str = "config",
    ) -> Config:
        """Build a config from nested plain data, validating every key against the dataclasses."""
        if base is None:
            base = defaults(home or Path("~/.modelrunner").expanduser())
        merged: Config = _merge(base, raw, prefix="", source=source)
        return merged

    def own_dirs(self) -> list[Path]:
        """The folders that are the daemon's alone (home, store, run, logs, KV cache).

        Not the socket's folder: ``server.socket`` may sit in a shared one like /run/user/UID.
        """
        runners = self.runners
        dirs = [self.home, self.store.path, runners.run_dir, runners.log_dir]
        return dirs + ([runners.kv_cache.path] if runners.kv_cache.path else [])

    def with_env(self, env: Mapping[str, str]) -> Config:
        """Apply Docker Model Runner's environment variables and ``MODELRUNNER_<SECTION>_<KEY>``."""
        flat: dict[str, Any] = {}
        for var, key in ENV_VARS.items():
            if env.get(var, "").strip():
                flat[key] = _strip_quotes(env[var])
        for var, value in env.items():
            if var.startswith("MODELRUNNER_") and var not in ("MODELRUNNER_DEBUG",):
                key = var.removeprefix("MODELRUNNER_").lower()
                section, _, name = key.partition("_")
                if section in ("store", "runners", "server") and name:
                    flat[f"{section}.{name}"] = _strip_quotes(value)
        if not flat:
            return self
        nested: dict[str, Any] = {}
        for key, value in flat.items():
            node = nested
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        merged: Config = _merge(self, nested, prefix="", source="environment")
        return merged

    def with_models(self, models: Mapping[str, ModelSettings]) -> Config:
        return dataclasses.replace(self, models=dict(models))


# Docker Model Runner's variables (reference §5), mapped onto our keys.
ENV_VARS: dict[str, str] = {
    "MODELS_PATH": "store.path",
    "MODEL_RUNNER_SOCK": "server.socket",
    "MODEL_RUNNER_PORT": "server.port",
    "LLAMA_SERVER_PATH": "runners.llama_server_path",
    "LLAMA_ARGS": "runners.llama_args",
    "MODEL_RUNNER_ENGINE": "runners.engine",
    "MLX_SERVER_PATH": "runners.mlx_python",  # Docker's: the python3 that runs mlx_lm.server
    "DMR_ORIGINS": "server.origins",
    "DISABLE_METRICS": "server.disable_metrics",
    "LOG_LEVEL": "log_level",
    "MODEL_RUNNER_LOG_DIR": "runners.log_dir",
    "INSECURE_REGISTRY": "store.insecure_registries",
    "MODEL_RUNNER_API_KEYS": "server.api_keys",
    "MODEL_RUNNER_API_KEYS_FILE": "server.api_keys_file",  # a mounted Secret (Kubernetes)
    "MODEL_RUNNER_ALLOWED_HOSTS": "server.allowed_hosts",
}

LOG_LEVELS = ("debug", "info", "warning", "warn", "error")
ENGINES = ("auto", "native", "wheel")


def defaults(home: Path) -> Config:
    """Defaults with every path under *home* (``MODEL_RUNNER_HOME``)."""
    home = home.expanduser()
    return Config(
        home=home,
        store=StoreConfig(path=home / "models"),
        runners=RunnersConfig(
            run_dir=home / "run",
            log_dir=home / "logs",
            kv_cache=KVCacheConfig(path=home / "kvcache"),
        ),
        server=ServerConfig(socket=home / "run" / "model-runner.sock"),
    )


def _strip_quotes(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def _merge(obj: Any, raw: Mapping[str, Any], *, prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: must be a mapping")
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj) if f.name != "source"}
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        key_s = str(key).replace("-", "_")
        path = f"{prefix}{key_s}"
        if key_s not in names:
            allowed = ", ".join(sorted(names))
            raise ConfigError(f"{source}: unknown key {path!r} (known keys: {allowed})")
        current = getattr(obj, key_s)
        if key_s == "models" and prefix == "":
            changes[key_s] = _models(value, current, source=source)
        elif dataclasses.is_dataclass(current):
            changes[key_s] = _merge(current, value, prefix=f"{path}.", source=source)
        else:
            changes[key_s] = _coerce(value, hints[key_s], path=path, source=source)
    if isinstance(obj, Config):
        changes.setdefault("source", source)
    result = dataclasses.replace(obj, **changes)
    _validate(result, prefix=prefix, source=source)
    return result


def _models(value: Any, current: Mapping[str, ModelSettings], *, source: str) -> dict[str, Any]:
    if value is None:
        return dict(current)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: models: must be a mapping of model reference to settings")
    merged = dict(current)
    for ref, settings in value.items():
        base = merged.get(str(ref), ModelSettings())
        merged[str(ref)] = _merge(base, settings or {}, prefix=f"models.{ref}.", source=source)
    return merged


def _coerce(value: Any, hint: Any, *, path: str, source: str) -> Any:
    """Turn YAML/env/flag values into the declared type, or say which key is wrong."""

    def bad(expected: str) -> ConfigError:
        # A malformed key list is described by its type: a key is never echoed.
        got = type(value).__name__ if path.endswith("api_keys") else repr(value)
        return ConfigError(f"{source}: {path}: must be {expected}, got {got}")

    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (
            isinstance(value, str) and value.strip().lower() in ("", "none", "null")
        ):
            return None
        return _coerce(value, args[0], path=path, source=source)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "t", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "f", "false", "no", "off"):
            return False
        raise bad("a boolean (true/false)")
    if hint is int:
        if isinstance(value, bool):
            raise bad("an integer")
        try:
            return int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise bad("an integer") from None
    if hint is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("a string")
        return str(value)
    if hint is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise bad("a path")
        return Path(value).expanduser()
    if origin is tuple:
        if isinstance(value, str):
            # Argument lists split like a shell; lists of names split on commas too.
            items: list[Any] = (
                shlex.split(value)
                if path.endswith(("llama_args", "runtime_flags"))
                else value.replace(",", " ").split()
            )
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise bad("a list of strings")
        if not all(isinstance(i, (str, int, float)) and not isinstance(i, bool) for i in items):
            raise bad("a list of strings")
        return tuple(str(i) for i in items)
    raise bad(str(hint))


_POSITIVE = {
    "max_loaded": 1,
    "max_in_flight": 1,
    "max_queue": 0,
    "max_body_bytes": 1,
    "default_context_size": 1,
    "max_concurrent_pulls": 1,
    "log_tail_lines": 1,
    "log_backups": 0,
    "min_free_bytes": 0,
    "max_pending_header_connections": 1,
    "responses_max_count": 1,
    "responses_max_bytes": 1,
    "request_log_records": 1,
    "request_log_body_bytes": 1024,
    "events_queue": 1,
    "conversations": 0,
}


def _validate(obj: Any, *, prefix: str, source: str) -> None:
    for name, minimum in _POSITIVE.items():
        if hasattr(obj, name):
            v = getattr(obj, name)
            if v < minimum:
                raise ConfigError(
                    f"{source}: {prefix}{name}: must be an integer >= {minimum}, got {v}"
                )
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name.endswith("_s") and isinstance(v, (int, float)) and v < 0:
            raise ConfigError(f"{source}: {prefix}{f.name}: must be >= 0 seconds, got {v}")
    if isinstance(obj, ServerConfig) and not 0 <= obj.port <= 65535:
        raise ConfigError(f"{source}: {prefix}port: must be between 0 and 65535, got {obj.port}")
    if isinstance(obj, ServerConfig) and not 0 <= obj.ollama_port <= 65535:
        raise ConfigError(
            f"{source}: {prefix}ollama_port: must be between 0 and 65535, got {obj.ollama_port}"
        )
    if isinstance(obj, RunnersConfig) and obj.engine not in ENGINES:
        raise ConfigError(
            f"{source}: {prefix}engine: must be one of {', '.join(ENGINES)}, got {obj.engine!r}"
        )
    fraction = getattr(obj, "memory_fraction", None)
    if isinstance(obj, RunnersConfig) and fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"{source}: {prefix}memory_fraction: must be in (0, 1], got {fraction}")
    if isinstance(obj, ModelSettings) and obj.context_size is not None and obj.context_size < 1:
        raise ConfigError(f"{source}: {prefix}context_size: must be >= 1, got {obj.context_size}")
    if isinstance(obj, Config) and obj.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"{source}: log_level: must be one of {', '.join(LOG_LEVELS)}, got {obj.log_level!r}"
        )
