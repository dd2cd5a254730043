"""
From the effective config to a ServiceSpec, and the starter config file a service points at.

The service runs ``modelrunner --config <file> serve``; the file must exist, so installing writes
a commented starter when there is none (an existing file is never touched).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from modelrunner.config import Config
from modelrunner.service.manager import installed_program
from modelrunner.service.units import DEFAULT_PATH, ServiceSpec

STARTER_CONFIG = """\
# modelrunner configuration, read by `modelrunner serve` at start and again on SIGHUP
# (`systemctl --user reload modelrunner`, or `kill -HUP <pid>` under launchd).
# Every key is optional; the defaults are shown commented out.  Environment variables
# (MODEL_RUNNER_PORT, MODELS_PATH, LLAMA_SERVER_PATH, …) override this file.
server:
  port: 12434                 # TCP listener on 127.0.0.1 (0 = none); the Unix socket is always on
#  socket: ~/.modelrunner/run/model-runner.sock
# store:
#   path: ~/.modelrunner/models
# runners:
#   llama_server_path: /opt/homebrew/bin/llama-server
#   max_loaded: 2
#   idle_ttl_s: 300
# models:
#   ai/gemma3:270M-Q4_K_M:
#     context_size: 8192
#     pinned: true
"""


def config_path_for(config: Config, explicit: str | Path | None) -> Path:
    """The file the service will read: ``--config`` if given, else ``<home>/config.yaml``."""
    if explicit is not None:
        return Path(explicit).expanduser().absolute()
    return (config.home / "config.yaml").absolute()


def ensure_config(path: Path) -> bool:
    """Write the starter config when *path* does not exist; returns whether it wrote one."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTER_CONFIG, encoding="utf-8")
    return True


# Variables that, set in the shell running `service install`, go into the service's environment
# (resolved to absolute values): otherwise `MODEL_RUNNER_PORT=12435 modelrunner service install`
# would silently serve on 12434.  Unset, the config file decides (and can change them).
CARRIED_ENV = ("MODEL_RUNNER_SOCK", "MODEL_RUNNER_PORT", "MODELS_PATH", "LLAMA_SERVER_PATH")


def carried_env(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The CARRIED_ENV variables set in *environ*, as *config* resolved them."""
    resolved = {
        "MODEL_RUNNER_SOCK": str(config.server.socket.absolute()),
        "MODEL_RUNNER_PORT": str(config.server.port),
        "MODELS_PATH": str(config.store.path.absolute()),
    }
    if config.runners.llama_server_path is not None:
        resolved["LLAMA_SERVER_PATH"] = str(config.runners.llama_server_path.absolute())
    return {name: resolved[name] for name in CARRIED_ENV if environ.get(name) and name in resolved}


def build_spec(
    config: Config,
    config_path: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    program: tuple[str, ...] | None = None,
) -> ServiceSpec:
    """The service for *config*: its home, log dir and config file, run by the installed CLI."""
    program = program or installed_program()
    path = list(DEFAULT_PATH)
    # The directory of the program (a venv's bin/) first, so its llama-server wheel is found.
    first = str(Path(program[0]).parent)
    if first not in path:
        path.insert(0, first)
    return ServiceSpec(
        program=program,
        config_path=config_path,
        home=config.home.absolute(),
        log_dir=config.runners.log_dir.absolute(),
        working_dir=config.home.absolute(),
        env=dict(extra_env or {}),
        path=tuple(path),
    )
