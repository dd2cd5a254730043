"""
What a service manager is given: the launchd agent plist and the systemd user unit, rendered.

Pure: no I/O, no subprocesses.  Both files run the installed ``modelrunner --config <file> serve``
and carry ``MODEL_RUNNER_HOME`` and ``PATH`` in their environment (plus what ``spec.carried_env``
and ``--env`` add): every other setting lives in the config file they point at, so nothing depends
on ``launchctl setenv`` (whose values are lost on reboot, Ollama's long-standing complaint on
macOS) and editing the file plus a restart (or SIGHUP) is how the service is reconfigured.
"""

from __future__ import annotations

import plistlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LABEL = "io.github.modelrunner"  # launchd label: <reverse-dns>.modelrunner
UNIT_NAME = "modelrunner.service"
DESCRIPTION = "modelrunner: local AI models on llama-server (Docker Model Runner API)"
# Where Homebrew and the usual system tools live; launchd starts agents with a bare PATH.
DEFAULT_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """Everything both renderers need: which program, which config, where logs go."""

    program: tuple[str, ...]  # the installed modelrunner (or python -m modelrunner)
    config_path: Path
    home: Path  # MODEL_RUNNER_HOME
    log_dir: Path
    working_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)  # extra variables (--env K=V)
    path: tuple[str, ...] = DEFAULT_PATH

    @property
    def argv(self) -> list[str]:
        return [*self.program, "--config", str(self.config_path), "serve"]

    @property
    def environment(self) -> dict[str, str]:
        env = {"MODEL_RUNNER_HOME": str(self.home), "PATH": ":".join(self.path)}
        env.update(self.env)
        return env

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / "service.out.log"

    @property
    def stderr_log(self) -> Path:
        return self.log_dir / "service.err.log"


def render_plist(spec: ServiceSpec, label: str = LABEL) -> bytes:
    """The launchd agent for ``~/Library/LaunchAgents/<label>.plist`` (XML plist)."""
    agent: dict[str, object] = {
        "Label": label,
        "ProgramArguments": spec.argv,
        "EnvironmentVariables": spec.environment,
        "WorkingDirectory": str(spec.working_dir),
        "RunAtLoad": True,
        # Restart after a crash or a non-zero exit, not after a clean stop (SIGTERM -> exit 0).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        # The daemon drains requests and stops its runners on SIGTERM; give it the time.
        "ExitTimeOut": 30,
        "ProcessType": "Interactive",
        "StandardOutPath": str(spec.stdout_log),
        "StandardErrorPath": str(spec.stderr_log),
    }
    return plistlib.dumps(agent, fmt=plistlib.FMT_XML, sort_keys=False)


_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def _systemd_word(word: str) -> str:
    """Quote one ExecStart word: ``%`` and ``$`` are specifiers there, spaces split words."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _PLAIN.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_assignment(name: str, value: str) -> str:
    escaped = value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{name}={escaped}"'


def render_unit(spec: ServiceSpec, description: str = DESCRIPTION) -> str:
    """The systemd user unit for ``~/.config/systemd/user/modelrunner.service``."""
    lines = [
        "[Unit]",
        f"Description={description}",
        "Documentation=https://docs.docker.com/ai/model-runner/",
        "After=network.target",
        "",
        "[Service]",
        # The daemon sends READY=1 once its socket and port listen (sd_notify).
        "Type=notify",
        f"ExecStart={' '.join(_systemd_word(w) for w in spec.argv)}",
        # ExecReload: the daemon re-reads its config file on SIGHUP.
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={_systemd_word(str(spec.working_dir))}",
    ]
    lines += [f"Environment={_systemd_assignment(k, v)}" for k, v in spec.environment.items()]
    lines += [
        "Restart=on-failure",
        "RestartSec=2",
        # SIGTERM to the daemon only: it drains requests and stops its llama-server children
        # itself; anything still alive after TimeoutStopSec gets SIGKILL.
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``["K=V", …]`` from ``--env`` flags; raises ValueError naming the bad one."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"--env {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out
