"""File modes (issue 30): nothing under the daemon's home is open to others, whatever the umask.

A runner's llama-server answers whoever can connect to its socket, with no API key: the modes of
the home, ``run/`` and the socket are all that keep other local users out.  So the daemon runs
under an owner-only umask that its children inherit, and tightens at start what an older version
left open (``modelrunner/fsmodes.py``).  Each test starts the real daemon under a loose umask and
gets every kind of file made: the store (through ``modelrunner package``), settings.json, a
runner with its socket and log, a stored response and a KV cache save.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fixtures.daemon import DaemonHandle

pytestmark = pytest.mark.llama

MODEL = "test/tiny"
RUNUSER = "/usr/sbin/runuser"
# Run as `nobody`: connect to the socket in argv[1], send GET /health, print the status line
# (or "denied" when the connect is refused for want of permission).
PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("denied")
    sys.exit(0)
s.sendall(b"GET /health HTTP/1.1\\r\\nHost: runner\\r\\nConnection: close\\r\\n\\r\\n")
print(s.recv(256).split(b"\\r\\n")[0].decode())
"""


def call(d: DaemonHandle, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")
    finally:
        conn.close()


def chat(d: DaemonHandle) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    status, answer = call(d, "POST", "/engines/v1/chat/completions", body)
    assert status == 200, answer


def make_every_kind_of_file(d: DaemonHandle, gguf: Path) -> None:
    """Store, settings, a runner (socket, log, pid record), a stored response, a KV cache."""
    cli = [sys.executable, "-m", "modelrunner", "--config", str(d.config_path)]
    packaged = subprocess.run(
        [*cli, "package", "--gguf", str(gguf), MODEL],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert packaged.returncode == 0, packaged.stderr
    status, body = call(d, "POST", "/engines/_configure", {"model": MODEL, "context-size": 512})
    assert status == 202, body
    chat(d)
    status, body = call(
        d, "POST", "/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 2}
    )
    assert status == 200, body
    status, body = call(d, "POST", "/engines/unload", {"models": [MODEL]})  # saves its KV cache
    assert status == 200, body
    chat(d)  # a runner again, so its socket is there to be checked


def runner_socket(d: DaemonHandle) -> Path:
    (sock,) = (d.home / "run").glob("r-*.sock")
    return sock


def entries(root: Path) -> list[Path]:
    """*root* and everything below it, symlinks left out (their own mode means nothing)."""
    found = [root]
    for top, dirs, files in os.walk(root):
        found += [Path(top, name) for name in (*dirs, *files)]
    return [p for p in found if p.exists() and not p.is_symlink()]


def open_to_others(root: Path) -> list[str]:
    loose = []
    for path in entries(root):
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:  # a temp file renamed meanwhile
            continue
        if mode & 0o077:
            loose.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return loose


def umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no Umask line for {pid}")


@pytest.mark.parametrize("umask", [0o000, 0o002], ids=["umask000", "umask002"])
def test_everything_under_the_home_is_owner_only(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path, umask: int
) -> None:
    """Under ``umask 000`` (or ``002``) every file, folder and socket the daemon and its runners
    make is owner-only; so are config.yaml and daemon.stderr, which the fixture wrote before."""
    d = daemon_factory(umask=umask)
    make_every_kind_of_file(d, tiny_gguf)
    home = d.home
    made = {
        "runner socket": [runner_socket(d)],
        "daemon log": [home / "logs" / "daemon.log"],
        "runner logs": [p for p in (home / "logs").iterdir() if p.name != "daemon.log"],
        "pid records": list((home / "run" / "runners").iterdir()),
        "blobs": list((home / "models" / "blobs" / "sha256").iterdir()),
        "manifests": list((home / "models" / "manifests" / "sha256").iterdir()),
        "index": [home / "models" / "models.json"],
        "settings": [home / "settings.json"],
        "stored responses": list((home / "responses").iterdir()),
        "KV cache": list((home / "kvcache").iterdir()),
    }
    for what, paths in made.items():
        assert paths, what
        assert all(p.exists() for p in paths), (what, paths)
    assert open_to_others(home) == []
    assert stat.S_IMODE(runner_socket(d).stat().st_mode) & 0o077 == 0
    daemon = psutil.Process(d.pid)
    runners = [p for p in daemon.children(recursive=True) if "llama" in p.name()]
    assert runners
    for process in [daemon, *runners]:
        assert umask_of(process.pid) & 0o077 == 0o077, process.cmdline()


def loosen(root: Path) -> None:
    """What an older version under ``umask 000`` left: every folder and socket 0777, files 0666."""
    for path in entries(root):
        mode = stat.S_IMODE(path.lstat().st_mode)
        path.chmod(0o777 if path.is_dir() or path.is_socket() else mode | 0o666)


def as_nobody(sock: Path) -> str:
    probe = subprocess.run(
        [RUNUSER, "-u", "nobody", "--", "/usr/bin/python3", "-c", PROBE, str(sock)],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser -u nobody needs root")
@pytest.mark.skipif(not Path(RUNUSER).exists(), reason=f"no {RUNUSER}")
@pytest.mark.skipif(shutil.which("python3", path="/usr/bin") is None, reason="no /usr/bin/python3")
def test_another_user_cannot_reach_a_runner(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path
) -> None:
    """``nobody`` cannot connect to a runner's socket, even with the home left 0777 by an older
    version: the daemon tightens it at start, and ``run/`` and the socket each keep others out
    on their own.  Opening the socket at the end lets nobody in: the probe can see a leak."""
    d = daemon_factory(umask=0)
    d.stop()
    loosen(d.home)  # /tmp is 1777: nothing above the home stops nobody now
    d.start()
    make_every_kind_of_file(d, tiny_gguf)
    sock = runner_socket(d)
    assert as_nobody(sock) == "denied"
    assert as_nobody(d.socket_path) == "denied"
    d.home.chmod(0o755)  # someone opens the home: run/ still keeps others out
    assert as_nobody(sock) == "denied"
    (d.home / "run").chmod(0o755)  # and run/: the socket's own mode still does
    assert as_nobody(sock) == "denied"
    sock.chmod(0o777)
    assert as_nobody(sock) == "HTTP/1.1 200 OK"
