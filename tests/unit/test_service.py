"""The rendered service files, and install/uninstall/status/logs with run_tool faked."""

from __future__ import annotations

import plistlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from modelrunner.cli.main import main
from modelrunner.config import Config, defaults
from modelrunner.service import (
    LABEL,
    Launchd,
    ServiceSpec,
    Systemd,
    ToolResult,
    build_spec,
    detect,
    render_plist,
    render_unit,
)
from modelrunner.service import manager as manager_mod
from modelrunner.service.spec import STARTER_CONFIG, ensure_config
from modelrunner.service.units import parse_env

PROGRAM = ("/opt/mr/venv/bin/modelrunner",)


def spec_for(home: Path, **kw: object) -> ServiceSpec:
    config = defaults(home / ".modelrunner")
    return build_spec(
        config, home / ".modelrunner" / "config.yaml", program=PROGRAM, extra_env=kw or None
    )


class FakeLaunchctl:
    """launchctl's observable behaviour: a set of loaded labels per domain."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.loaded: dict[str, Path] = {}

    def __call__(self, argv: Sequence[str], capture: bool) -> ToolResult:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "tail":
            return ToolResult(0)
        assert argv[0] == "launchctl"
        verb = argv[1]
        if verb == "print":
            if argv[2] in self.loaded:
                return ToolResult(0, f"{argv[2]} = {{\n\tstate = running\n\tpid = 4242\n}}\n")
            return ToolResult(113, "", f"Could not find service {argv[2]!r}\n")
        if verb == "bootstrap":
            plist = plistlib.loads(Path(argv[3]).read_bytes())
            target = f"{argv[2]}/{plist['Label']}"
            if target in self.loaded:
                return ToolResult(5, "", "Bootstrap failed: 5: Input/output error\n")
            self.loaded[target] = Path(argv[3])
            return ToolResult(0)
        if verb == "bootout":
            return ToolResult(0) if self.loaded.pop(argv[2], None) else ToolResult(3, "", "No such")
        if verb == "enable":
            return ToolResult(0)
        raise AssertionError(f"unexpected launchctl call {argv}")

    def verbs(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "launchctl" and c[1] != "print"]


class FakeSystemctl:
    """systemctl --user's observable behaviour for one unit: enabled, active, reloaded files."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.enabled = self.active = False
        self.reloads = 0

    def __call__(self, argv: Sequence[str], capture: bool) -> ToolResult:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "journalctl":
            return ToolResult(0)
        assert argv[:2] == ["systemctl", "--user"], argv
        verb = argv[2]
        if verb == "daemon-reload":
            self.reloads += 1
        elif verb == "enable":
            self.enabled = True
        elif verb in ("start", "restart"):
            self.active = True
        elif verb == "is-active":
            return ToolResult(0 if self.active else 3)
        elif verb == "disable":
            self.enabled = False
            if "--now" in argv:
                self.active = False
        elif verb == "show":
            state = "active\nSubState=running\nMainPID=777" if self.active else "inactive"
            if not self.active:
                state += "\nSubState=dead\nMainPID=0"
            return ToolResult(0, f"LoadState=loaded\nActiveState={state}\n")
        else:
            raise AssertionError(f"unexpected systemctl call {argv}")
        return ToolResult(0)

    def verbs(self) -> list[str]:
        return [c[2] for c in self.calls if c[0] == "systemctl" and c[2] not in ("show",)]


class TestPlist:
    def test_parses_and_holds_the_agent_fields(self, tmp_path: Path) -> None:
        """ProgramArguments run the installed CLI on the config file; logs under home/logs."""
        spec = spec_for(tmp_path)
        plist = plistlib.loads(render_plist(spec))
        home = tmp_path / ".modelrunner"
        assert plist["Label"] == LABEL
        assert LABEL.endswith(".modelrunner")
        assert plist["ProgramArguments"] == [
            *PROGRAM,
            "--config",
            str(home / "config.yaml"),
            "serve",
        ]
        assert plist["RunAtLoad"] is True
        assert plist["KeepAlive"] == {"SuccessfulExit": False}
        assert Path(plist["StandardOutPath"]).parent == home / "logs"
        assert Path(plist["StandardErrorPath"]).parent == home / "logs"
        assert plist["EnvironmentVariables"]["MODEL_RUNNER_HOME"] == str(home)
        assert "/opt/homebrew/bin" in plist["EnvironmentVariables"]["PATH"].split(":")
        assert plist["WorkingDirectory"] == str(home)

    def test_extra_environment_goes_into_the_plist(self, tmp_path: Path) -> None:
        plist = plistlib.loads(render_plist(spec_for(tmp_path, LLAMA_ARGS="--threads 4")))
        assert plist["EnvironmentVariables"]["LLAMA_ARGS"] == "--threads 4"


class TestSystemdUnit:
    def test_holds_execstart_restart_and_environment(self, tmp_path: Path) -> None:
        unit = render_unit(spec_for(tmp_path))
        home = tmp_path / ".modelrunner"
        lines = unit.splitlines()
        assert f"ExecStart={PROGRAM[0]} --config {home}/config.yaml serve" in lines
        assert "Restart=on-failure" in lines
        assert "Type=notify" in lines  # started = READY=1 from the daemon, once it listens
        assert f'Environment="MODEL_RUNNER_HOME={home}"' in lines
        assert "WantedBy=default.target" in lines
        assert lines[0] == "[Unit]"

    def test_quotes_spaces_and_escapes_specifiers(self, tmp_path: Path) -> None:
        """A home with a space, % and $ survives systemd's word splitting and expansion."""
        odd = tmp_path / "my home %n $USER"
        spec = build_spec(defaults(odd), odd / "config.yaml", program=("/x/modelrunner",))
        unit = render_unit(spec)
        assert f'"{tmp_path}/my home %%n $$USER/config.yaml"' in unit
        assert f'Environment="MODEL_RUNNER_HOME={tmp_path}/my home %%n $USER"' in unit


class TestSpec:
    def test_starter_config_is_a_valid_config(self, tmp_path: Path) -> None:
        path = tmp_path / "config.yaml"
        assert ensure_config(path)
        assert path.read_text() == STARTER_CONFIG
        config = Config.load(path, env={"MODEL_RUNNER_HOME": str(tmp_path)})
        assert config.server.port == 12434
        path.write_text("server: {port: 9}\n")
        assert not ensure_config(path), "an existing config is never overwritten"
        assert path.read_text() == "server: {port: 9}\n"

    def test_parse_env_rejects_pairs_without_a_name(self) -> None:
        assert parse_env(["A=1", "B_2=x=y"]) == {"A": "1", "B_2": "x=y"}
        with pytest.raises(ValueError, match="NAME=VALUE"):
            parse_env(["=1"])

    def test_detect_picks_the_os_manager(self) -> None:
        assert detect("darwin") == "launchd"
        assert detect("linux") == "systemd"
        with pytest.raises(manager_mod.ServiceError, match="win32"):
            detect("win32")


class TestLaunchdRoundTrip:
    def test_install_twice_then_uninstall(self, tmp_path: Path) -> None:
        """Install writes and bootstraps; again is a no-op; uninstall boots out and removes."""
        fake = FakeLaunchctl()
        mgr = Launchd(tmp_path, tool=fake, uid=501)
        spec = spec_for(tmp_path)
        assert mgr.install(spec, say=lambda _: None)
        plist_path = tmp_path / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        assert mgr.path == plist_path
        assert plistlib.loads(plist_path.read_bytes())["Label"] == LABEL
        assert fake.loaded == {f"gui/501/{LABEL}": plist_path}
        assert spec.log_dir.is_dir()
        assert not mgr.install(spec, say=lambda _: None)
        assert fake.verbs() == ["enable", "bootstrap"], "a second install changes nothing"
        state = mgr.state()
        assert (state.installed, state.running, state.pid) == (True, True, 4242)
        assert mgr.uninstall(say=lambda _: None)
        assert not plist_path.exists()
        assert fake.loaded == {}
        assert not mgr.uninstall(say=lambda _: None)
        assert fake.verbs() == ["enable", "bootstrap", "bootout"]

    def test_a_changed_file_reloads_the_agent(self, tmp_path: Path) -> None:
        fake = FakeLaunchctl()
        mgr = Launchd(tmp_path, tool=fake, uid=501)
        mgr.install(spec_for(tmp_path), say=lambda _: None)
        assert mgr.install(spec_for(tmp_path, LOG_LEVEL="debug"), say=lambda _: None)
        assert fake.verbs() == ["enable", "bootstrap", "bootout", "enable", "bootstrap"]
        env = plistlib.loads(mgr.path.read_bytes())["EnvironmentVariables"]
        assert env["LOG_LEVEL"] == "debug"

    def test_bootstrap_is_retried_while_launchd_tears_the_old_agent_down(
        self, tmp_path: Path
    ) -> None:
        fake = FakeLaunchctl()
        busy = [ToolResult(5, "", "Bootstrap failed: 5: Input/output error\n")] * 2

        def flaky(argv: Sequence[str], capture: bool) -> ToolResult:
            if argv[1] == "bootstrap" and busy:
                fake.calls.append(list(argv))
                return busy.pop()
            return fake(argv, capture)

        mgr = Launchd(tmp_path, tool=flaky, uid=501)
        mgr.bootstrap_pause_s = 0
        mgr.install(spec_for(tmp_path), say=lambda _: None)
        assert fake.verbs() == ["enable", "bootstrap", "bootstrap", "bootstrap"]
        assert f"gui/501/{LABEL}" in fake.loaded

    def test_logs_tail_the_service_log(self, tmp_path: Path) -> None:
        fake = FakeLaunchctl()
        mgr = Launchd(tmp_path, tool=fake, uid=501)
        spec = spec_for(tmp_path)
        with pytest.raises(manager_mod.ServiceError, match="no service log yet"):
            mgr.logs_argv(spec, 10, False)
        spec.log_dir.mkdir(parents=True)
        spec.stderr_log.write_text("{}\n")
        argv = mgr.logs_argv(spec, 10, True)
        assert argv == ["tail", "-n", "10", "-F", str(spec.stderr_log)]
        assert mgr.run_logs(argv) == 0


class TestSystemdRoundTrip:
    def test_install_twice_then_uninstall(self, tmp_path: Path) -> None:
        fake = FakeSystemctl()
        mgr = Systemd(tmp_path, tool=fake)
        spec = spec_for(tmp_path)
        assert mgr.install(spec, say=lambda _: None)
        unit_path = tmp_path / ".config" / "systemd" / "user" / "modelrunner.service"
        assert mgr.path == unit_path
        assert "Restart=on-failure" in unit_path.read_text()
        assert (fake.enabled, fake.active) == (True, True)
        assert fake.verbs() == ["daemon-reload", "enable", "is-active", "start"]
        fake.calls.clear()
        assert not mgr.install(spec, say=lambda _: None)
        assert fake.verbs() == ["daemon-reload", "enable", "is-active"], "nothing restarts"
        state = mgr.state()
        assert (state.installed, state.running, state.pid) == (True, True, 777)
        fake.calls.clear()
        assert mgr.uninstall(say=lambda _: None)
        assert not unit_path.exists()
        assert (fake.enabled, fake.active) == (False, False)
        assert fake.verbs() == ["disable", "daemon-reload"]
        assert mgr.state().installed is False

    def test_a_changed_unit_restarts_the_service(self, tmp_path: Path) -> None:
        fake = FakeSystemctl()
        mgr = Systemd(tmp_path, tool=fake)
        mgr.install(spec_for(tmp_path), say=lambda _: None)
        fake.calls.clear()
        mgr.install(spec_for(tmp_path, LOG_LEVEL="debug"), say=lambda _: None)
        assert fake.verbs() == ["daemon-reload", "enable", "is-active", "restart"]

    def test_no_user_bus_explains_linger(self, tmp_path: Path) -> None:
        def no_bus(argv: Sequence[str], capture: bool) -> ToolResult:
            return ToolResult(1, "", "Failed to connect to bus: No medium found\n")

        mgr = Systemd(tmp_path, tool=no_bus)
        with pytest.raises(manager_mod.ServiceError, match="enable-linger"):
            mgr.install(spec_for(tmp_path), say=lambda _: None)
        assert mgr.path.exists(), "the unit is written even when it cannot be started"


class TestCommand:
    """`modelrunner service …` in process, with run_tool (the one boundary) replaced."""

    @pytest.fixture
    def home(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("MODEL_RUNNER_HOME", raising=False)
        monkeypatch.delenv("MODEL_RUNNER_ENTRYPOINT", raising=False)
        return tmp_path

    def test_systemd_install_status_uninstall(
        self, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake = FakeSystemctl()
        monkeypatch.setattr(manager_mod, "run_tool", fake)
        assert main(["service", "--manager", "systemd", "install"]) == 0
        out = capsys.readouterr().out
        config = home / ".modelrunner" / "config.yaml"
        assert f"wrote a starter config to {config}" in out
        assert config.read_text() == STARTER_CONFIG
        unit = (home / ".config/systemd/user/modelrunner.service").read_text()
        assert f"--config {config} serve" in unit
        assert main(["service", "--manager", "systemd", "status"]) == 0
        out = capsys.readouterr().out
        assert "active (running), pid 777" in out
        sock = home / ".modelrunner" / "run" / "model-runner.sock"
        assert f"socket:    {sock} (nothing listening)" in out
        assert main(["service", "--manager", "systemd", "logs", "-n", "5"]) == 0
        assert fake.calls[-1] == [
            "journalctl",
            "--user",
            "-u",
            "modelrunner.service",
            "-n",
            "5",
            "--no-pager",
        ]
        assert main(["service", "--manager", "systemd", "uninstall"]) == 0
        assert main(["service", "--manager", "systemd", "status"]) == 3
        assert "not installed" in capsys.readouterr().out
        assert config.exists(), "uninstall keeps the config"

    def test_launchd_install_with_an_explicit_config(
        self, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake = FakeLaunchctl()
        monkeypatch.setattr(manager_mod, "run_tool", fake)
        config = home / "etc" / "mr.yaml"
        argv = ["--config", str(config), "service", "--manager", "launchd", "install"]
        config.parent.mkdir()
        config.write_text("runners: {max_loaded: 3}\n")
        assert main(argv) == 0
        plist = plistlib.loads((home / f"Library/LaunchAgents/{LABEL}.plist").read_bytes())
        assert plist["ProgramArguments"][-3:] == ["--config", str(config), "serve"]
        assert config.read_text() == "runners: {max_loaded: 3}\n"
        assert main(argv) == 0
        assert f"{LABEL} is already loaded" in capsys.readouterr().out

    def test_a_bad_config_is_refused_before_installing(
        self, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setattr(manager_mod, "run_tool", FakeSystemctl())
        config = home / "bad.yaml"
        config.write_text("server: {port: 99999}\n")
        assert main(["--config", str(config), "service", "--manager", "systemd", "install"]) == 1
        assert "port" in capsys.readouterr().err
        assert not (home / ".config/systemd/user/modelrunner.service").exists()


def test_help_does_not_import_the_store_or_the_runners() -> None:
    """`modelrunner --help` loads every command module; setup-default's are imported lazily."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib\n"
        "from modelrunner.cli.main import main\n"
        "with contextlib.suppress(SystemExit): main(['--help'])\n"
        "print([m for m in ('modelrunner.distribution.store', 'modelrunner.runners.locate')"
        " if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "setup-default" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_socket_port_store_set_in_the_installing_shell_go_into_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`MODEL_RUNNER_PORT=12435 modelrunner service install` serves on 12435, not silently on
    12434; unset, they stay out of the file (the config decides)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MODEL_RUNNER_HOME", raising=False)
    for name in ("MODEL_RUNNER_SOCK", "MODEL_RUNNER_PORT", "MODELS_PATH", "LLAMA_SERVER_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(manager_mod, "run_tool", FakeLaunchctl())
    plist_path = tmp_path / f"Library/LaunchAgents/{LABEL}.plist"
    assert main(["service", "--manager", "launchd", "install"]) == 0
    env = plistlib.loads(plist_path.read_bytes())["EnvironmentVariables"]
    assert set(env) == {"MODEL_RUNNER_HOME", "PATH"}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_RUNNER_PORT", "12435")
    monkeypatch.setenv("MODEL_RUNNER_SOCK", "/tmp/mr-x.sock")
    monkeypatch.setenv("MODELS_PATH", "store")  # relative: resolved for the service
    argv = ["service", "--manager", "launchd", "install", "--env", "MODEL_RUNNER_PORT=9"]
    assert main(argv) == 0
    env = plistlib.loads(plist_path.read_bytes())["EnvironmentVariables"]
    assert env["MODEL_RUNNER_SOCK"] == "/tmp/mr-x.sock"
    assert env["MODELS_PATH"] == str(tmp_path / "store")
    assert env["MODEL_RUNNER_PORT"] == "9", "--env wins over the shell"
    assert "LLAMA_SERVER_PATH" not in env
