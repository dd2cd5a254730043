"""The real CLI's `service install --dry-run`: a plist plistlib reads, a unit systemd accepts."""

from __future__ import annotations

import os
import plistlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from modelrunner.service import LABEL

CLI = [sys.executable, "-m", "modelrunner"]


def dry_run(home: Path, manager: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER")}
    env["HOME"] = str(home)
    return subprocess.run(
        [*CLI, "service", "--manager", manager, "install", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_dry_run_prints_the_plist_and_writes_nothing(tmp_path: Path) -> None:
    """stdout is the plist itself; stderr names where it would go; the home stays empty."""
    done = dry_run(tmp_path, "launchd")
    plist = plistlib.loads(done.stdout.encode())
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"][-3:] == [
        "--config",
        str(tmp_path / ".modelrunner" / "config.yaml"),
        "serve",
    ]
    assert Path(plist["ProgramArguments"][0]).name in ("modelrunner", Path(sys.executable).name)
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert f"Library/LaunchAgents/{LABEL}.plist" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze --user verify` accepts the unit with no warning at all."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd; `make test` does)")
    done = dry_run(tmp_path, "systemd")
    assert "Restart=on-failure" in done.stdout
    assert ".config/systemd/user/modelrunner.service" in done.stderr
    unit = tmp_path / "modelrunner.service"
    unit.write_text(done.stdout)
    (tmp_path / ".modelrunner").mkdir()  # WorkingDirectory must exist
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}

    def run_verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [analyze, "--user", "verify", str(unit)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    verify = run_verify()
    if verify.returncode != 0 and "Failed to initialize manager" in verify.stderr:
        pytest.skip(f"systemd-analyze cannot start a user manager here: {verify.stderr.strip()}")
    assert (verify.returncode, verify.stderr) == (0, "")

    # The same check rejects a broken unit, so the pass above means something.
    unit.write_text(done.stdout.replace("Restart=on-failure", "Restart=sometimes"))
    broken = run_verify()
    assert "restart specifier" in broken.stderr


def test_a_service_installed_from_a_checkout_runs_the_bin_shim(tmp_path: Path) -> None:
    """`bin/modelrunner service install` makes the service run that same shim."""
    shim = Path(__file__).resolve().parents[2] / "bin" / "modelrunner"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(
        [str(shim), "service", "--manager", "launchd", "install", "--dry-run"],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    plist = plistlib.loads(done.stdout)
    assert plist["ProgramArguments"][0] == str(shim)
    serve = shim.with_name("modelrunner-serve")
    assert os.access(serve, os.X_OK)
    version = subprocess.run(
        [str(shim), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert version.stdout.startswith("modelrunner ")


def test_the_service_command_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """What launchd/systemd run (argv and environment from the plist) serves, tells systemd
    READY=1 (Type=notify) only once its socket answers, and a stop by SIGTERM exits 0:
    launchd's KeepAlive {SuccessfulExit: false} must not restart it."""
    home = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    try:
        config = home / "service.yaml"
        config.write_text("server:\n  port: 0\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER")}
        env["HOME"] = str(tmp_path)
        env["MODEL_RUNNER_HOME"] = str(home / "mr")
        argv = ["--config", str(config), "service", "--manager", "launchd", "install", "--dry-run"]
        done = subprocess.run(
            [*CLI, *argv],
            env=env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        plist = plistlib.loads(done.stdout)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(home / "notify"))
        notify.settimeout(60)
        service_env = {"HOME": str(tmp_path), **plist["EnvironmentVariables"]}
        service_env["NOTIFY_SOCKET"] = str(home / "notify")  # as systemd sets it
        (home / "mr").mkdir()
        proc = subprocess.Popen(
            plist["ProgramArguments"],
            env=service_env,
            cwd=plist["WorkingDirectory"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            sock = home / "mr" / "run" / "model-runner.sock"
            ready = notify.recv(4096).decode()  # blocks until the daemon says it is ready
            assert ready.splitlines() == ["READY=1", f"MAINPID={proc.pid}"]
            listed = subprocess.run(
                ["curl", "-sf", "--unix-socket", str(sock), "http://localhost/models"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert listed.stdout.strip() == "[]"
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert b"daemon.stopped" in err
        finally:
            notify.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(home, ignore_errors=True)
