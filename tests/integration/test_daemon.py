"""The real daemon (tests/fixtures/daemon.py) driven as its users do: `curl --unix-socket` in a
subprocess, the `openai` package over TCP, and raw HTTP for the error cases."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from tests.fixtures.daemon import DaemonHandle

pytestmark = pytest.mark.llama

MODEL = "test/tiny"  # == test/tiny:latest == docker.io/test/tiny:latest


def curl(
    d: DaemonHandle, method: str, path: str, body: Any = None, headers: tuple[str, ...] = ()
) -> tuple[int, str]:
    """One request through the Unix socket with the real curl; (status, body)."""
    argv = [
        "curl",
        "-sS",
        "--unix-socket",
        str(d.socket_path),
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        f"http://localhost{path}",
    ]
    for h in headers:
        argv += ["-H", h]
    if body is not None:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        out = subprocess.run(
            argv,
            input=data if isinstance(data, bytes) else data.encode(),
            capture_output=True,
            check=True,
            timeout=60,
        )
    else:
        out = subprocess.run(argv, capture_output=True, check=True, timeout=60)
    text, _, status = out.stdout.decode().rpartition("\n")
    return int(status), text


def client(d: DaemonHandle) -> openai.OpenAI:
    # openai>=3 refuses an empty api_key client-side; the daemon ignores the key.  "localhost",
    # as users write it (the port is a free one, not 12434, so tests can run side by side).
    return openai.OpenAI(
        base_url=f"http://localhost:{d.port}/engines/llama.cpp/v1/",
        api_key="unused",
        max_retries=0,
        timeout=60,
    )


@pytest.fixture
def served(daemon: DaemonHandle, tiny_gguf: Path) -> DaemonHandle:
    daemon.add_model(MODEL, tiny_gguf)
    return daemon


def runner_pids(d: DaemonHandle) -> dict[str, int]:
    status, text = curl(d, "GET", "/engines/ps")
    assert status == 200
    return {f"{r['model_name']}/{r['mode']}": r["pid"] for r in json.loads(text)}


def test_models_over_the_unix_socket(served: DaemonHandle) -> None:
    status, text = curl(served, "GET", "/models")
    assert status == 200
    (item,) = json.loads(text)
    assert item["tags"] == ["docker.io/test/tiny:latest"]
    assert item["id"].startswith("sha256:")
    assert item["config"]["format"] == "gguf"
    status, text = curl(served, "GET", "/models/test/tiny")  # normalised, slash in the name
    assert status == 200
    one = json.loads(text)
    assert one["id"] == item["id"]
    argv = one["llama_server_args"]["completion"]
    assert argv[argv.index("--ctx-size") + 1] == "512"  # the artifact's context
    assert "--embeddings" in one["llama_server_args"]["embedding"]
    assert curl(served, "GET", "/") == (200, "Docker Model Runner is running")
    status, text = curl(served, "GET", "/engines/status")
    running = json.loads(text)["llama.cpp"]
    assert running.startswith("Running: llama.cpp")
    assert "runners.llama_server_path=" in running  # how the engine was chosen
    _, text = curl(served, "GET", "/version")
    assert json.loads(text)["engine"].startswith("runners.llama_server_path=")


def test_openai_package_end_to_end(served: DaemonHandle) -> None:
    """Models list, chat (plain and streamed), completions and embeddings with `openai`."""
    # The tiny GGUF declares no pooling, which llama-server's OpenAI embeddings refuse: set one.
    flags = {"model": MODEL, "mode": "embedding", "runtime-flags": ["--pooling", "mean"]}
    assert curl(served, "POST", "/engines/_configure", flags) == (202, "")
    oa = client(served)
    assert [m.id for m in oa.models.list()] == ["docker.io/test/tiny:latest"]
    assert oa.models.retrieve("test/tiny").object == "model"
    msgs = [{"role": "user", "content": "hi"}]
    chat = oa.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)  # type: ignore[arg-type]
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 4
    assert chat.model == "test/tiny:latest"  # the runner's --alias, not the blob's path
    chunks = list(
        oa.chat.completions.create(
            model="test/tiny:latest",
            messages=msgs,
            max_tokens=5,
            stream=True,  # type: ignore[arg-type]
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 5
    assert text
    done = oa.completions.create(model=MODEL, prompt="once upon", max_tokens=3)
    assert done.choices[0].text
    emb = oa.embeddings.create(model=MODEL, input=["a", "b"])
    assert len(emb.data) == 2
    assert len(emb.data[0].embedding) == 64  # the tiny model's n_embd
    modes = sorted(runner_pids(served))
    assert modes == ["test/tiny:latest/completion", "test/tiny:latest/embedding"]


def test_engines_routes_and_metrics_after_traffic(served: DaemonHandle) -> None:
    oa = client(served)
    oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    streamed = oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
    )
    assert list(streamed)
    status, text = curl(served, "GET", "/engines/ps")
    (row,) = json.loads(text)
    assert row["backend_name"] == "llama.cpp"
    assert row["model_name"] == "test/tiny:latest"
    assert row["mode"] == "completion"
    assert row["last_used"].endswith("Z")
    assert row["last_used"] != "0001-01-01T00:00:00Z"
    status, text = curl(served, "GET", "/engines/df")
    df = json.loads(text)
    assert df["models_disk_usage"] > 500_000
    assert df["default_backend_disk_usage"] > 0
    status, text = curl(served, "GET", "/metrics")
    assert status == 200
    # 2 from the answer's usage, 3 from the stream's final timings
    assert 'modelrunner_tokens_total{model="test/tiny:latest",kind="completion"} 5' in text
    assert "modelrunner_runner_loads_total 1" in text
    assert 'modelrunner_runner_memory_bytes{model="test/tiny:latest"' in text
    assert 'route="/engines/{backend}/v1/chat/completions",status="200"} 2' in text
    status, text = curl(served, "GET", "/logs")
    assert status == 200
    assert "daemon.ready" in text
    status, text = curl(served, "GET", "/logs?model=test/tiny")
    assert status == 200
    assert "llama" in text.lower()
    assert curl(served, "POST", "/engines/unload", {"models": [MODEL]}) == (
        200,
        '{"unloaded_runners": 1}',
    )
    assert json.loads(curl(served, "GET", "/engines/ps")[1]) == []
    assert curl(served, "POST", "/engines/unload", {"all": True})[1] == '{"unloaded_runners": 0}'
    status, text = curl(served, "POST", "/models/test/tiny/load?mode=embedding")  # explicit load
    assert status == 200, text
    assert list(runner_pids(served)) == ["test/tiny:latest/embedding"]
    (row,) = json.loads(curl(served, "GET", "/engines/ps")[1])  # idle since its load
    assert row["last_used"] != "0001-01-01T00:00:00Z"
    preload = subprocess.run(  # Docker's preload header: load, answer 200 empty, no generation
        [
            "curl",
            "-sS",
            "-w",
            "%{http_code}",
            "-H",
            "X-Preload-Only: true",
            "-d",
            json.dumps({"model": MODEL}),
            f"{served.base_url}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert preload == "200"
    assert sorted(runner_pids(served)) == [
        "test/tiny:latest/completion",
        "test/tiny:latest/embedding",
    ]
    # A third runner with runners.max_loaded 2 (the default) evicts the least recently used.
    body = {"model": MODEL, "query": "a", "documents": ["b"]}
    assert curl(served, "POST", "/rerank", body)[0] == 200
    assert sorted(runner_pids(served)) == [
        "test/tiny:latest/completion",
        "test/tiny:latest/reranking",
    ]
    _, text = curl(served, "GET", "/metrics")
    assert "modelrunner_runner_evictions_total 1" in text
    assert "modelrunner_runner_loads_total 4" in text
    latency = 'modelrunner_http_request_duration_seconds_count{method="POST",route="/rerank"} 1'
    assert latency in text


def test_tag_and_rm(served: DaemonHandle) -> None:
    status, text = curl(served, "POST", "/models/test/tiny/tag?repo=test/other&tag=v2")
    assert status == 201
    assert json.loads(text) == {
        "message": 'Model tagged successfully with "test/other:v2"',
        "target": "test/other:v2",
    }
    oa = client(served)
    assert [m.id for m in oa.models.list()] == ["docker.io/test/tiny:latest"]  # one per model
    status, text = curl(served, "DELETE", "/models/test/tiny")
    assert (status, json.loads(text)) == (200, [{"Untagged": "docker.io/test/tiny:latest"}])
    model_id = json.loads(curl(served, "GET", "/models/test/other:v2")[1])["id"]
    status, text = curl(served, "DELETE", f"/models/{model_id}")
    assert status == 200
    assert {"Deleted": model_id} in json.loads(text)
    assert curl(served, "GET", "/models") == (200, "[]")


def test_configure_is_stored_applied_and_survives_restart(served: DaemonHandle) -> None:
    body = {
        "model": MODEL,
        "context-size": 1024,
        "runtime-flags": ["--temp", "0.1"],
        "keep_alive": "10m",
    }
    assert curl(served, "POST", "/engines/_configure", body) == (202, "")
    _, text = curl(served, "GET", "/engines/_configure")
    (row,) = json.loads(text)
    assert row["Model"] == "test/tiny:latest"
    assert row["Config"] == {
        "context-size": 1024,
        "runtime-flags": ["--temp", "0.1"],
        "keep_alive": "10m0s",
    }
    oa = client(served)
    oa.completions.create(model=MODEL, prompt="x", max_tokens=1)
    pid = runner_pids(served)["test/tiny:latest/completion"]
    argv = psutil.Process(pid).cmdline()
    assert argv[argv.index("--ctx-size") + 1] == "1024"
    assert argv[argv.index("--temp") + 1] == "0.1"
    assert curl(served, "POST", "/engines/unload", {"all": True})[0] == 200  # kept on unload
    oa.completions.create(model=MODEL, prompt="x", max_tokens=1)
    new_pid = runner_pids(served)["test/tiny:latest/completion"]
    assert new_pid != pid
    argv = psutil.Process(new_pid).cmdline()
    assert argv[argv.index("--ctx-size") + 1] == "1024"
    served.kill()  # a crash: no clean shutdown, the socket file stays behind
    served.restart()
    _status, text = curl(served, "GET", "/models/test/tiny")
    args = json.loads(text)["llama_server_args"]["completion"]
    assert args[args.index("--ctx-size") + 1] == "1024"
    oa.completions.create(model=MODEL, prompt="x", max_tokens=1)
    argv = psutil.Process(runner_pids(served)["test/tiny:latest/completion"]).cmdline()
    assert argv[argv.index("--ctx-size") + 1] == "1024"
    assert json.loads(curl(served, "GET", "/engines/ps")[1])[0]["keep_alive"] == "10m0s"
    # A later _configure changes only what it names; pinned is applied to the running runner.
    assert curl(served, "POST", "/engines/_configure", {"model": MODEL, "pinned": True}) == (
        202,
        "",
    )
    (row,) = json.loads(curl(served, "GET", "/engines/_configure?model=test/tiny")[1])
    assert row["Config"] == {
        "context-size": 1024,
        "runtime-flags": ["--temp", "0.1"],
        "keep_alive": "10m0s",
        "pinned": True,
    }
    oa.completions.create(model=MODEL, prompt="x", max_tokens=1)
    (ps_row,) = json.loads(curl(served, "GET", "/engines/ps")[1])
    assert ps_row["pinned"] is True


BAD_OPENAI = [
    (b"{", 400, "not valid JSON"),
    (b"[]", 400, "JSON object"),
    (b'{"messages": []}', 400, "no 'model'"),
    (b'{"model": 3}', 400, "non-empty string"),
    (b'{"model": ""}', 400, "non-empty string"),
    (b'{"model": "AI/Bad Name"}', 400, ""),
    (b'{"model": "ai/absent"}', 404, "modelrunner pull ai/absent"),
]


def test_4xx_are_json_never_500(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path
) -> None:
    d = daemon_factory(server={"max_body_bytes": 4096, "origins": ["http://localhost:*"]})
    d.add_model(MODEL, tiny_gguf)
    for body, want, words in BAD_OPENAI:
        status, text = curl(d, "POST", "/engines/llama.cpp/v1/chat/completions", body)
        assert status == want, (body, text)
        assert words in json.loads(text)["error"]["message"], text
    status, text = curl(d, "POST", "/engines/vllm/v1/chat/completions", {"model": MODEL})
    assert status == 400
    assert "unknown backend 'vllm'" in json.loads(text)["error"]["message"]
    status, text = curl(d, "POST", "/v1/completions", {"model": MODEL, "p": "x" * 5000})
    assert status == 413
    assert json.loads(text)["error"]["code"] == "payload_too_large"
    for method, path, body in [
        ("POST", "/engines/_configure", {"model": MODEL, "context-size": "big"}),
        ("POST", "/engines/_configure", {"model": MODEL, "runtime-flags": ["--model", "x"]}),
        ("POST", "/engines/unload", {"models": "notalist"}),
        ("POST", "/models/create", {"from": 3}),
        ("POST", "/models/test/tiny/tag", None),
        ("GET", "/models/ai/absent", None),
        ("DELETE", "/models/ai/absent", None),
        ("PUT", "/models", None),
    ]:
        status, text = curl(d, method, path, body)
        assert 400 <= status < 500, (path, status, text)
        assert isinstance(json.loads(text)["error"], str), text
    oa = client(d)
    with pytest.raises(openai.NotFoundError, match="not in the local store"):
        oa.chat.completions.create(model="ai/absent", messages=[], max_tokens=1)
    # CORS: only configured origins (a port wildcard here), never others.
    out = subprocess.run(
        ["curl", "-sS", "-i", "-H", "Origin: http://localhost:3000", f"{d.base_url}/models"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Access-Control-Allow-Origin: http://localhost:3000" in out
    preflight = subprocess.run(  # a browser's openai client: its API key rides in Authorization
        [
            "curl",
            "-sS",
            "-i",
            "-X",
            "OPTIONS",
            "-H",
            "Origin: http://localhost:3000",
            "-H",
            "Access-Control-Request-Method: POST",
            "-H",
            "Access-Control-Request-Headers: authorization, content-type",
            f"{d.base_url}/engines/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert preflight.startswith("HTTP/1.1 204"), preflight
    assert "Access-Control-Allow-Origin: http://localhost:3000" in preflight
    assert "Access-Control-Allow-Headers: authorization, content-type" in preflight
    status, text = curl(d, "GET", "/models", headers=("Origin: http://evil.example",))
    assert status == 403
    assert "not allowed" in json.loads(text)["error"]
    assert "Traceback" not in d.log_text()


def test_load_a_packaged_tar_then_tag_it(served: DaemonHandle, tmp_path: Path) -> None:
    """`docker model package`'s path: a tar streamed to POST /models/load, left untagged, then
    tagged by the CLI."""
    from modelrunner.config import StoreConfig
    from modelrunner.distribution import Store
    from tests.unit.test_store_archive import docker_tar

    model_id = json.loads(curl(served, "GET", "/models/test/tiny")[1])["id"]
    tar = tmp_path / "model.tar"
    tar.write_bytes(docker_tar(Store(StoreConfig(path=served.store_path)), model_id))
    assert curl(served, "DELETE", f"/models/{model_id}")[0] == 200
    argv = [
        "curl",
        "-sS",
        "--unix-socket",
        str(served.socket_path),
        "-H",
        "Content-Type: application/x-tar",
        "-H",
        "Accept: application/json",
        "--data-binary",
        f"@{tar}",
        "http://localhost/models/load",
    ]
    out = subprocess.run(argv, capture_output=True, check=True, text=True, timeout=60).stdout
    last = json.loads(out.splitlines()[-1])
    assert last["type"] == "success"
    (item,) = json.loads(curl(served, "GET", "/models")[1])
    assert item["id"] == model_id
    assert "tags" not in item
    status, _ = curl(served, "POST", f"/models/{model_id}/tag?repo=test/loaded&tag=v1")
    assert status == 201
    oa = client(served)
    done = oa.completions.create(model="test/loaded:v1", prompt="x", max_tokens=1)
    assert done.choices[0].text is not None


def test_rerank_and_score_on_a_reranking_runner(served: DaemonHandle) -> None:
    """Docker's `/rerank` and `/score`, and `/v1/rerank` (a client whose base_url ends in /v1/):
    all answered by one runner started with `--embeddings --reranking`."""
    body = {"model": MODEL, "query": "a", "documents": ["the a", "of to", "in"]}
    for path in ("/rerank", "/engines/llama.cpp/v1/rerank", "/engines/score", "/v1/score"):
        status, text = curl(served, "POST", path, body)
        assert status == 200, (path, text)
        results = json.loads(text)["results"]
        assert sorted(r["index"] for r in results) == [0, 1, 2], text
        assert all(isinstance(r["relevance_score"], float) for r in results), text
    pids = runner_pids(served)
    assert list(pids) == ["test/tiny:latest/reranking"]
    argv = psutil.Process(pids["test/tiny:latest/reranking"]).cmdline()
    assert "--reranking" in argv
    assert "--embeddings" in argv
    status, text = curl(served, "POST", "/engines/vllm/rerank", body)
    assert status == 400
    assert "unknown backend" in json.loads(text)["error"]["message"]


def test_version_delete_force_and_purge(served: DaemonHandle, tiny_gguf: Path) -> None:
    status, text = curl(served, "GET", "/version")
    assert status == 200
    assert json.loads(text)["version"]
    assert curl(served, "POST", "/models/test/tiny/tag?repo=test/other&tag=v2")[0] == 201
    model_id = json.loads(curl(served, "GET", "/models/test/tiny")[1])["id"]
    status, text = curl(served, "DELETE", f"/models/{model_id}")  # by ID, two tags: no force
    assert status == 409, text
    assert "force" in json.loads(text)["error"]
    assert len(json.loads(curl(served, "GET", "/models")[1])) == 1
    status, text = curl(served, "DELETE", f"/models/{model_id}?force")  # bare ?force is true
    assert status == 200, text
    assert sorted(json.loads(text), key=json.dumps) == sorted(
        [
            {"Untagged": "docker.io/test/other:v2"},
            {"Untagged": "docker.io/test/tiny:latest"},
            {"Deleted": model_id},
        ],
        key=json.dumps,
    )
    assert curl(served, "GET", "/models") == (200, "[]")
    served.add_model(MODEL, tiny_gguf)
    assert curl(served, "POST", "/engines/_configure", {"model": MODEL, "context-size": 1024}) == (
        202,
        "",
    )
    client(served).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert curl(served, "DELETE", "/models/purge") == (200, "")
    assert curl(served, "GET", "/models") == (200, "[]")
    assert json.loads(curl(served, "GET", "/engines/ps")[1]) == []
    assert json.loads(curl(served, "GET", "/engines/_configure")[1]) == []
