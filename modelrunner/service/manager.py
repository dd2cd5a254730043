"""
Installing, removing and inspecting the modelrunner service under launchd or systemd --user.

Every call to ``launchctl``, ``systemctl``, ``journalctl`` and ``tail`` goes through ``run_tool``,
the one boundary tests replace; everything else here (paths, files, decisions) is real.  Install is
idempotent: an unchanged file on an already loaded service does nothing; a changed one is rewritten
and the service restarted.  Uninstall stops the service and removes only the file it installed
(the config, the models and the logs stay).  Synchronous: the CLI calls it, never the event loop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from modelrunner.errors import ModelRunnerError
from modelrunner.service.units import LABEL, UNIT_NAME, ServiceSpec, render_plist, render_unit


class ServiceError(ModelRunnerError):
    code = "service_error"


@dataclass(frozen=True, slots=True)
class ToolResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


ToolFn = Callable[[Sequence[str], bool], ToolResult]
Say = Callable[[str], None]


def run_tool(argv: Sequence[str], capture: bool = True) -> ToolResult:
    """Run a service-manager tool; the only place this module starts a process."""
    try:
        done = subprocess.run(list(argv), capture_output=capture, text=True, check=False)
    except FileNotFoundError as e:
        raise ServiceError(f"{argv[0]} not found: {e.strerror}") from e
    return ToolResult(done.returncode, done.stdout or "", done.stderr or "")


@dataclass(frozen=True, slots=True)
class ServiceState:
    installed: bool
    loaded: bool
    running: bool
    pid: int | None
    detail: str  # the manager's own words: "active (running)", "state = running"…


class ServiceManager:
    """One service manager: where its file goes, how it is (un)loaded, how logs are read."""

    kind: ClassVar[str]
    label: ClassVar[str]

    def __init__(self, user_home: Path, *, tool: ToolFn | None = None) -> None:
        self.user_home = user_home
        self._tool_override = tool

    def _tool(self, argv: Sequence[str], capture: bool) -> ToolResult:
        # Looked up at call time, so a test that replaces ``run_tool`` replaces every call.
        return (self._tool_override or run_tool)(argv, capture)

    @property
    def path(self) -> Path:
        raise NotImplementedError

    def render(self, spec: ServiceSpec) -> bytes:
        raise NotImplementedError

    def _activate(self, changed: bool, say: Say) -> None:
        raise NotImplementedError

    def _deactivate(self, say: Say) -> None:
        raise NotImplementedError

    def state(self) -> ServiceState:
        raise NotImplementedError

    def logs_argv(self, spec: ServiceSpec, lines: int, follow: bool) -> list[str]:
        raise NotImplementedError

    def _run(self, *argv: str, check: bool = True) -> ToolResult:
        result = self._tool(argv, True)
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
            raise ServiceError(f"`{' '.join(argv)}` failed: {detail}{self._hint(result)}")
        return result

    def _hint(self, result: ToolResult) -> str:
        return ""

    def install(self, spec: ServiceSpec, say: Say = print) -> bool:
        """Write the file and (re)load the service; returns whether the file changed."""
        content = self.render(spec)
        for d in (spec.home, spec.log_dir, self.path.parent):
            d.mkdir(parents=True, exist_ok=True)
        old = self.path.read_bytes() if self.path.exists() else None
        changed = old != content
        if changed:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_bytes(content)
            tmp.chmod(0o644)
            tmp.replace(self.path)
            say(f"{'updated' if old is not None else 'wrote'} {self.path}")
        else:
            say(f"{self.path} is up to date")
        self._activate(changed, say)
        return changed

    def uninstall(self, say: Say = print) -> bool:
        """Stop the service and remove its file; returns whether there was anything to remove."""
        had_file = self.path.exists()
        self._deactivate(say)
        if had_file:
            self.path.unlink()
            say(f"removed {self.path}")
        self._after_remove()
        if not had_file:
            say(f"not installed ({self.path} does not exist)")
        return had_file

    def _after_remove(self) -> None:
        """A hook for managers that must be told a file went away."""

    def run_logs(self, argv: Sequence[str]) -> int:
        """Run the log reader with the terminal as its output; returns its exit status."""
        return self._tool(argv, False).returncode


BOOTSTRAP_EIO = 5


class Launchd(ServiceManager):
    kind = "launchd"
    label = LABEL

    def __init__(self, user_home: Path, *, tool: ToolFn = run_tool, uid: int | None = None) -> None:
        super().__init__(user_home, tool=tool)
        self.uid = os.getuid() if uid is None else uid

    @property
    def path(self) -> Path:
        return self.user_home / "Library" / "LaunchAgents" / f"{self.label}.plist"

    @property
    def domain(self) -> str:
        return f"gui/{self.uid}"

    @property
    def target(self) -> str:
        return f"{self.domain}/{self.label}"

    def render(self, spec: ServiceSpec) -> bytes:
        return render_plist(spec, self.label)

    def _loaded(self) -> ToolResult | None:
        result = self._run("launchctl", "print", self.target, check=False)
        return result if result.returncode == 0 else None

    def _activate(self, changed: bool, say: Say) -> None:
        if self._loaded() is not None:
            if not changed:
                say(f"{self.label} is already loaded in {self.domain}")
                return
            self._run("launchctl", "bootout", self.target)
        # enable clears a `launchctl disable` left from before, which would make bootstrap fail.
        self._run("launchctl", "enable", self.target, check=False)
        self._bootstrap()
        say(f"loaded {self.label} in {self.domain} (starts now and at every login)")

    bootstrap_attempts: ClassVar[int] = 5
    bootstrap_pause_s: float = 0.5

    def _bootstrap(self) -> None:
        # Right after a bootout, launchd may still be tearing the old instance down and refuse
        # with "5: Input/output error"; it succeeds a moment later.
        for _ in range(self.bootstrap_attempts - 1):
            result = self._run("launchctl", "bootstrap", self.domain, str(self.path), check=False)
            if result.returncode == 0:
                return
            if result.returncode != BOOTSTRAP_EIO:
                break
            time.sleep(self.bootstrap_pause_s)
        self._run("launchctl", "bootstrap", self.domain, str(self.path))

    def _deactivate(self, say: Say) -> None:
        if self._loaded() is None:
            return
        self._run("launchctl", "bootout", self.target)
        say(f"unloaded {self.label} from {self.domain}")

    def state(self) -> ServiceState:
        installed = self.path.exists()
        loaded = self._loaded()
        if loaded is None:
            return ServiceState(installed, False, False, None, "not loaded")
        fields: dict[str, str] = {}
        for line in loaded.stdout.splitlines():
            key, sep, value = line.strip().partition(" = ")
            if sep and key not in fields:
                fields[key] = value.strip()
        pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
        running = fields.get("state") == "running"
        detail = f"state = {fields.get('state', 'unknown')}"
        if "last exit code" in fields:
            detail += f", last exit code = {fields['last exit code']}"
        return ServiceState(installed, True, running, pid, detail)

    def logs_argv(self, spec: ServiceSpec, lines: int, follow: bool) -> list[str]:
        if not spec.stderr_log.exists() and not follow:
            raise ServiceError(f"no service log yet at {spec.stderr_log}")
        return ["tail", "-n", str(lines), *(["-F"] if follow else []), str(spec.stderr_log)]


class Systemd(ServiceManager):
    kind = "systemd"
    label = UNIT_NAME

    @property
    def path(self) -> Path:
        return self.user_home / ".config" / "systemd" / "user" / self.label

    def render(self, spec: ServiceSpec) -> bytes:
        return render_unit(spec).encode()

    def _hint(self, result: ToolResult) -> str:
        if "bus" in (result.stderr + result.stdout).lower():
            return (
                f" (no systemd user session here; the unit is at {self.path}: log in to a "
                "session, or run `loginctl enable-linger $USER` so user services run without one)"
            )
        return ""

    def _systemctl(self, *args: str, check: bool = True) -> ToolResult:
        return self._run("systemctl", "--user", *args, check=check)

    def _activate(self, changed: bool, say: Say) -> None:
        # Always: the file may be unchanged but never loaded (an install without a user bus).
        self._systemctl("daemon-reload")
        self._systemctl("enable", self.label)
        active = self._systemctl("is-active", "--quiet", self.label, check=False).returncode == 0
        if active and not changed:
            say(f"{self.label} is already enabled and running")
            return
        self._systemctl("restart" if active else "start", self.label)
        say(f"{'restarted' if active else 'started'} {self.label} (enabled at every login)")

    def _deactivate(self, say: Say) -> None:
        if not self.path.exists():
            return
        result = self._systemctl("disable", "--now", self.label, check=False)
        if result.returncode == 0:
            say(f"stopped and disabled {self.label}")

    def _after_remove(self) -> None:
        self._systemctl("daemon-reload", check=False)

    def state(self) -> ServiceState:
        installed = self.path.exists()
        result = self._systemctl(
            "show", self.label, "--property=LoadState,ActiveState,SubState,MainPID", check=False
        )
        fields = dict(
            line.partition("=")[::2] for line in result.stdout.splitlines() if "=" in line
        )
        loaded = fields.get("LoadState") == "loaded"
        active, sub = fields.get("ActiveState", "unknown"), fields.get("SubState", "unknown")
        pid_s = fields.get("MainPID", "0")
        pid = int(pid_s) if pid_s.isdigit() and int(pid_s) > 0 else None
        detail = f"{active} ({sub})" if result.returncode == 0 else "unknown (systemctl failed)"
        return ServiceState(installed, loaded, active == "active", pid, detail)

    def logs_argv(self, spec: ServiceSpec, lines: int, follow: bool) -> list[str]:
        argv = ["journalctl", "--user", "-u", self.label, "-n", str(lines), "--no-pager"]
        return [*argv, "-f"] if follow else argv


MANAGERS: dict[str, type[ServiceManager]] = {"launchd": Launchd, "systemd": Systemd}


def detect(system: str = sys.platform) -> str:
    """The service manager of this OS: launchd on macOS, systemd on Linux."""
    if system == "darwin":
        return "launchd"
    if system.startswith("linux"):
        return "systemd"
    raise ServiceError(f"no service support for {system!r} (launchd on macOS, systemd on Linux)")


def manager_for(kind: str, user_home: Path, *, tool: ToolFn | None = None) -> ServiceManager:
    return MANAGERS[kind](user_home, tool=tool)


def installed_program(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The command a service should run: the checkout's bin/ shim, the venv's script, or -m."""
    env = dict(os.environ) if env is None else env
    shim = env.get("MODEL_RUNNER_ENTRYPOINT")
    if shim and Path(shim).is_file():
        return (str(Path(shim).absolute()),)
    # Not resolved: a venv's python is a symlink, and its scripts sit beside the link.
    beside = Path(sys.executable).with_name("modelrunner")
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside),)
    found = shutil.which("modelrunner", path=env.get("PATH"))
    if found:
        return (str(Path(found).absolute()),)
    return (sys.executable, "-m", "modelrunner")
