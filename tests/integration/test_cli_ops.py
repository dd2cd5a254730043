"""Issue 16.3 and 16.5 through the real CLI: `logs --runner MODEL` for a model that only ran as
an embedding runner (and `--mode`), and the README's `service` commands run as printed, with
`--dry-run`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_cli import fails, mr, ok
from tests.integration.test_daemon import curl

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.llama
def test_logs_runner_picks_the_mode_that_ran_and_takes_mode(
    daemon: DaemonHandle, tiny_gguf: Path
) -> None:
    env = daemon.env
    daemon.add_model("test/emb", tiny_gguf)
    flags = {"model": "test/emb", "mode": "embedding", "runtime-flags": ["--pooling", "mean"]}
    assert curl(daemon, "POST", "/engines/_configure", flags) == (202, "")
    status, _ = curl(daemon, "POST", "/v1/embeddings", {"model": "test/emb", "input": "a"})
    assert status == 200
    picked = settled(lambda: ok("logs", "--runner", "test/emb", env=env))
    assert "--embeddings" in picked or "embedding" in picked
    assert ok("logs", "--runner", "test/emb", "--mode", "embedding", env=env) == picked
    fails("logs", "--runner", "test/emb", "--mode", "reranking", env=env, match="modes: embedding")
    bad = mr("logs", "--runner", "test/emb", "--mode", "chat", env=env)
    assert bad.returncode == 2
    assert "invalid choice: 'chat'" in bad.stderr


def settled(read: Callable[[], str], timeout_s: float = 10.0) -> str:
    """*read*'s output once two reads 0.3 s apart agree: the runner's output reaches its log
    file in batches, so the last request's lines can land just after the answer did."""
    deadline = time.monotonic() + timeout_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = read()
        if now == last:
            return now
        last = now
    return last


def service_lines() -> list[str]:
    """Every `modelrunner service …` command in the README's Service section, as printed."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Service\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if " service " in f" {line} "]


def test_readme_service_commands_run_as_printed_with_dry_run() -> None:
    lines = service_lines()
    assert any("install --manager launchd" in line for line in lines)  # the form users type
    assert any("--manager systemd install" in line for line in lines)
    home = tempfile.mkdtemp(prefix="mr-svc-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER", "MODELS_"))}
    env["HOME"] = home
    for line in lines:
        argv = shlex.split(line)
        if "--dry-run" not in argv:
            argv.append("--dry-run")
        done = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert "unrecognized arguments" not in done.stderr, (line, done.stderr)
        assert "usage:" not in done.stderr, (line, done.stderr)
        # status answers 3 when the service is not running: a real answer, not a parse error.
        assert done.returncode in ((0, 3) if " status" in line else (0,)), (line, done.stderr)
    # --dry-run changed nothing: no service file, no config written.
    assert not (Path(home) / ".config" / "systemd").exists()
    assert not (Path(home) / "Library").exists()
    assert not (Path(home) / ".modelrunner" / "config.yaml").exists()
