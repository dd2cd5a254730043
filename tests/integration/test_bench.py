"""`modelrunner bench` (the real CLI) against the real daemon and the tiny model: streamed
requests at each concurrency level, a JSON line per level, bad flags refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_cli import CLI

pytestmark = pytest.mark.llama

MODEL = "test/tiny"


@pytest.fixture
def env(daemon: DaemonHandle, tiny_gguf: Path) -> dict[str, str]:
    daemon.add_model(MODEL, tiny_gguf)
    return {**daemon.env, "MODEL_RUNNER_HOME": str(daemon.home)}


def bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "bench", MODEL, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_json_has_a_line_per_level_with_tokens(env: dict[str, str]) -> None:
    """Two short levels: each line has tokens/s > 0, TTFT percentiles and no errors."""
    done = bench(env, "--json", "--duration", "1s", "--concurrency", "1,2", "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    levels, summary = lines[:-1], lines[-1]
    assert [line["concurrency"] for line in levels] == [1, 2]
    for level in levels:
        assert level["type"] == "level"
        assert level["tokens_per_second"] > 0
        assert level["requests"] >= 1
        assert level["errors"] == 0
        assert 0 < level["ttft_p50_ms"] <= level["ttft_p95_ms"]
        assert all(0 < n <= 8 for n in level["token_counts"])
    assert summary["type"] == "summary"
    assert summary["best_concurrency"] in (1, 2)
    assert summary["max_tokens_per_second"] > 0
    print("bench:", done.stdout)


def test_table(env: dict[str, str]) -> None:
    """Without --json: Docker's report, with TTFT and error columns."""
    done = bench(env, "--duration", "500ms", "--concurrency", "1", "--max-tokens", "4")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Concurrency 1:" in out
    assert "tokens/sec (rel. speed: 1.00x) fastest" in out
    assert "Best concurrency" in out
    assert "TTFT p50" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--duration", "soon"), "is not a duration"),
        (("--concurrency", "0,2"), "from 1 to 256"),
        (("--max-tokens", "0"), "at least 1"),
    ],
)
def test_bad_flags(env: dict[str, str], args: tuple[str, ...], message: str) -> None:
    done = bench(env, *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_unknown_model(env: dict[str, str]) -> None:
    done = subprocess.run(
        [*CLI, "bench", "test/absent", "--duration", "1s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("modelrunner: ")
    assert "test/absent" in done.stderr
