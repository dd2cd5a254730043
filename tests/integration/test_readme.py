"""
The README, followed from a clean clone: `make run` in the background, its examples as written.

The clone is of the repository's committed HEAD.  Its ``.venv`` is made beforehand as a bare venv
that sees this venv's site-packages (through a .pth line), so the Makefile's own install step runs
for real (``pip install -e '.[llama,default-model]'``) but finds the dependencies already there:
offline and quick.  ``HOME`` is a temporary directory, so ``~/.modelrunner/…`` in the examples
means a fresh home.  The engine cache (``MODEL_RUNNER_CACHE``) is this machine's, as a newcomer on
the same machine shares it: `make run`'s ``engine install`` finds the llama-server that runs here
(the wheel, or the native build `make test` made) instead of building again.  The answers must be
real: a llama-server that dies of SIGILL fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from modelrunner.runners.engine.cache import cache_root

ROOT = Path(__file__).resolve().parents[2]
TAG = "ai/gemma3:270M-Q4_K_M"


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_under(root: Path) -> list[psutil.Process]:
    """Every live process whose command line or working directory is under *root*."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
            if str(root) in text and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    yield path
    for p in processes_under(path):  # only after a failure: the test checks there are none
        p.kill()
    shutil.rmtree(path, ignore_errors=True)


def clean_clone(root: Path) -> Path:
    clone = root / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=60)
    venv = clone / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "_modelrunner_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return clone


def wait_for_models(sock: Path, make: subprocess.Popen[bytes], log: Path) -> str:
    """GET /models over the socket until it answers; fail with make's output if make exits."""
    deadline = time.monotonic() + 110
    while True:
        if make.poll() is not None:
            pytest.fail(f"`make run` exited ({make.returncode}):\n{log.read_text()[-3000:]}")
        if sock.exists():
            done = subprocess.run(
                ["curl", "-sf", "--unix-socket", str(sock), "http://localhost/models"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode == 0:
                return done.stdout
        assert time.monotonic() < deadline, f"not serving in time:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.slow
# A clone, `make run`'s setup and three real answers: minutes on a shared 2-core machine.
@pytest.mark.timeout(300)
def test_readme_from_a_clean_clone(root: Path) -> None:
    """`make run`; the README's curl and openai examples as written; Ctrl-C; nothing left."""
    for tool in ("git", "make", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if port_in_use(12434):
        pytest.skip("port 12434 is taken (another daemon); the README's openai example needs it")
    readme = (ROOT / "README.md").read_text()
    shell, python = code_blocks(readme, "sh"), code_blocks(readme, "python")
    assert [line.split()[:2] for line in shell[0].splitlines()] == [
        ["make", "run"],
        ["make", "test"],
    ], "the README opens with the two commands"
    chat_curl = next(b for b in shell if "chat/completions" in b and "--unix-socket" in b)
    models_curl = next(b for b in shell if b.strip().endswith("http://localhost/models"))
    # The default model is a base model that seldom ends its turn: unbounded, an example would
    # write until its 8192-token context is full (minutes on a CPU).
    assert '"max_tokens": ' in chat_curl
    assert "max_tokens=" in python[0]

    clone = clean_clone(root)
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER", "MODELRUNNER"))}
    env |= {"HOME": str(home), "PIP_CACHE_DIR": str(Path("~/.cache/pip").expanduser())}
    env["MODEL_RUNNER_CACHE"] = str(cache_root())
    for var in ("MODELS_PATH", "LLAMA_ARGS", "VIRTUAL_ENV", "LLAMA_SERVER_PATH"):
        env.pop(var, None)
    log = root / "make.log"
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
        )
    try:
        sock = home / ".modelrunner" / "run" / "model-runner.sock"
        listed = json.loads(wait_for_models(sock, make, log))
        assert [m["tags"] for m in listed] == [[f"docker.io/{TAG}"]]

        def sh(block: str) -> str:
            done = subprocess.run(
                ["bash", "-e", "-c", block],
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        assert f"docker.io/{TAG}" in sh(models_curl)
        chat = json.loads(sh(chat_curl))
        assert chat["choices"][0]["message"]["content"].strip(), chat

        example = subprocess.run(
            [str(clone / ".venv" / "bin" / "python"), "-c", python[0]],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert example.returncode == 0, example.stderr
        assert example.stdout.strip()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal running `make run`
            try:
                make.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
                pytest.fail(f"`make run` ignored Ctrl-C:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert "daemon.stopped" in text, text[-3000:]
    left = processes_under(root)
    assert not left, f"left running: {[p.cmdline() for p in left]}"
    assert not sock.exists(), "the socket is removed on stop"
    assert "engine: using" in text, text[-3000:]  # `make run` ran `engine install` first


def test_the_readme_config_example_is_a_valid_config(tmp_path: Path) -> None:
    """Every key the README's YAML examples show exists and takes the value shown: the
    Configuration section's full example, and each smaller one (Security, ...) as a config."""
    from modelrunner.config import Config

    first, *others = code_blocks((ROOT / "README.md").read_text(), "yaml")
    path = tmp_path / "config.yaml"
    for block in others:
        path.write_text(block)
        Config.load(path, env={"HOME": str(tmp_path)})
    path.write_text(first)
    config = Config.load(path, env={"HOME": str(tmp_path)})
    assert config.runners.max_loaded == 2
    assert config.models[TAG].pinned is True
    assert config.models[TAG].context_size == 4096
    assert config.server.port == 12434
