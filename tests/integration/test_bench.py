"""`modelrunner bench` (the real CLI) against the real daemon and the tiny model: streamed
requests at each concurrency level, Docker's JSON document, bad flags refused."""

from __future__ import annotations

import json
import shutil
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


# cmd/cli/commands/bench.go: `BenchmarkResult` has no json tags, so Go marshals its field names
# as declared; `TotalTime` is a time.Duration (integer nanoseconds).
DOCKER_RESULT = {
    "Concurrency": int,
    "MeanRPS": float,
    "TotalTokens": int,
    "TPS": float,
    "TotalTime": int,
    "Requests": int,
    "TokenCounts": list,
}
OURS = {"Errors", "TTFTP50", "TTFTP95"}  # beside Docker's, never instead of them


def test_json_is_dockers_one_document(env: dict[str, str]) -> None:
    """`--json` prints one document, `{model, prompt, results}` as `docker model bench --json`:
    a script doing `jq .results` on Docker's output works on ours."""
    done = bench(
        env,
        "--json",
        "--duration",
        "1s",
        "--concurrency",
        "2,1",
        "--max-tokens",
        "8",
        "--prompt",
        "hi",
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # ONE document, not a line per level
    assert set(doc) == {"model", "prompt", "results"}
    assert doc["model"] == MODEL
    assert doc["prompt"] == "hi"
    results = doc["results"]
    assert isinstance(results, list)
    assert [r["Concurrency"] for r in results] == [1, 2]  # one per level, by concurrency
    for r in results:
        assert set(r) == set(DOCKER_RESULT) | OURS, sorted(r)
        for name, kind in DOCKER_RESULT.items():
            assert isinstance(r[name], kind), (name, r[name])
        assert r["TPS"] > 0
        assert r["Requests"] == len(r["TokenCounts"]) >= 1
        assert r["TotalTokens"] == sum(r["TokenCounts"])
        assert all(0 < n <= 8 for n in r["TokenCounts"])
        assert r["TotalTime"] >= 1_000_000_000  # the level ran its whole second, in ns
        assert r["Errors"] == 0
        assert 0 < r["TTFTP50"] <= r["TTFTP95"] < r["TotalTime"]
    if shutil.which("jq"):  # the pipe Docker's users write
        jq = subprocess.run(
            ["jq", "-c", ".results | map(.Concurrency)"],
            input=done.stdout,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert jq.stdout.strip() == "[1,2]"
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
