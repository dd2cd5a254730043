"""Ollama's API on the real daemon, driven by the real `ollama` package (`Client(host=…)`) on
real runners: list, show, chat (plain and streamed), generate, embed, ps, pull from the test
registry, copy, delete, and Ollama's errors.  Plus: embeddings from a chat model whose GGUF
declares no pooling, through the real `openai` package, with no runtime flags set."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from modelrunner.distribution.gguf import read_gguf
from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_daemon import MODEL, client, curl

pytestmark = pytest.mark.llama


@pytest.fixture
def served(daemon: DaemonHandle, tiny_gguf: Path) -> DaemonHandle:
    daemon.add_model(MODEL, tiny_gguf)
    return daemon


def ollama_client(d: DaemonHandle) -> ollama.Client:
    return ollama.Client(host=f"http://127.0.0.1:{d.port}", timeout=60)


def test_list_show_chat_generate_embed_ps(served: DaemonHandle) -> None:
    """The calls an Ollama app makes, each answered in Ollama's shape by a real runner."""
    oc = ollama_client(served)
    (entry,) = oc.list().models
    assert entry.model == "test/tiny:latest"
    assert entry.details is not None
    assert entry.details.format == "gguf"
    assert entry.details.family == "llama"
    assert entry.details.quantization_level
    assert (entry.size or 0) > 0
    assert len(entry.digest or "") == 64

    shown = oc.show(MODEL)
    assert shown.details is not None
    assert shown.details.family == "llama"
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "completion" in (shown.capabilities or [])

    msgs = [{"role": "user", "content": "hi"}]
    answer = oc.chat(model=MODEL, messages=msgs, options={"num_predict": 4, "seed": 1})
    assert answer.done is True
    assert answer.done_reason == "length"
    assert answer.message.role == "assistant"
    assert answer.message.content
    assert answer.eval_count == 4
    assert (answer.prompt_eval_count or 0) > 0
    assert (answer.total_duration or 0) > 0
    assert (answer.eval_duration or 0) > 0

    parts = list(
        oc.chat(
            model="test/tiny:latest",
            messages=msgs,
            stream=True,
            options={"num_predict": 5, "temperature": 0.5, "top_k": 20, "top_p": 0.9},
        )
    )
    assert len(parts) >= 2
    assert all(p.done is False for p in parts[:-1])
    last = parts[-1]
    assert last.done is True
    assert last.done_reason == "length"
    assert last.eval_count == 5
    assert "".join(p.message.content or "" for p in parts)

    gen = oc.generate(model=MODEL, prompt="once upon", options={"num_predict": 3})
    assert gen.done is True
    assert gen.response
    assert gen.eval_count == 3
    streamed = list(
        oc.generate(model=MODEL, prompt="once", stream=True, options={"num_predict": 2})
    )
    assert streamed[-1].done is True

    # The tiny GGUF declares no pooling type: the embedding runner gets --pooling mean.
    emb = oc.embed(model=MODEL, input=["first text", "second text"])
    assert len(emb.embeddings) == 2
    assert all(len(v) == 64 for v in emb.embeddings)  # the tiny model's n_embd
    assert emb.embeddings[0] != emb.embeddings[1]
    legacy = oc.embeddings(model=MODEL, prompt="one")
    assert len(legacy.embedding) == 64

    running = oc.ps().models
    assert [m.model for m in running] == ["test/tiny:latest"]  # both modes, one entry
    (ps,) = running
    assert (ps.size or 0) > 0
    assert ps.expires_at is not None
    assert ps.details is not None
    assert ps.details.family == "llama"
    assert ps.context_length == 512


def test_missing_model_is_a_404_response_error(served: DaemonHandle) -> None:
    oc = ollama_client(served)
    for call in (
        lambda: oc.chat(model="no/such", messages=[{"role": "user", "content": "x"}]),
        lambda: oc.generate(model="no/such", prompt="x"),
        lambda: oc.show("no/such"),
        lambda: oc.embed(model="no/such", input="x"),
        lambda: oc.delete("no/such"),
        lambda: oc.copy("no/such", "test/other"),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 404
        assert "no/such" in caught.value.error
    # The same error in a streamed call: raised before any line arrives.
    with pytest.raises(ollama.ResponseError) as caught:
        list(oc.chat(model="no/such", messages=[], stream=True))
    assert caught.value.status_code == 404


def test_copy_then_delete(served: DaemonHandle) -> None:
    oc = ollama_client(served)
    assert oc.copy(MODEL, "test/copy:v2").status == "success"
    names = sorted(m.model or "" for m in oc.list().models)
    assert names == ["test/copy:v2", "test/tiny:latest"]
    assert len({m.digest for m in oc.list().models}) == 1  # one model, two tags
    answer = oc.generate(model="test/copy:v2", prompt="x", options={"num_predict": 1})
    assert answer.done
    assert oc.delete("test/copy:v2").status == "success"
    assert [m.model for m in oc.list().models] == ["test/tiny:latest"]
    # Ollama's short names are Docker's: `short:v1` is `ai/short:v1`.
    assert oc.copy(MODEL, "short:v1").status == "success"
    assert "ai/short:v1" in [m.model for m in oc.list().models]
    assert oc.show("short:v1").details is not None
    assert oc.delete("short:v1").status == "success"


@pytest.mark.registry
def test_pull_with_progress_then_delete(
    daemon: DaemonHandle, registry: Any, tiny_gguf: Path
) -> None:
    ref = f"{registry.host}/test/ollama-pull:v1"
    daemon.add_model(ref, tiny_gguf)
    status, text = curl(
        daemon, "POST", f"/models/{ref}/push", headers=("Accept: application/json",)
    )
    assert status == 200, text
    oc = ollama_client(daemon)
    assert oc.delete(ref).status == "success"
    assert oc.list().models == []

    progress = list(oc.pull(ref, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    layers = [p for p in progress if p.digest]
    assert layers
    biggest = max(layers, key=lambda p: p.total or 0)
    assert biggest.digest is not None
    assert biggest.digest.startswith("sha256:")
    assert biggest.status == f"pulling {biggest.digest[7:19]}"
    final = [p for p in layers if p.digest == biggest.digest][-1]
    assert final.completed == final.total
    assert [m.model for m in oc.list().models] == [ref]

    assert oc.pull(ref).status == "success"  # cached: one object without stream
    assert oc.delete(ref).status == "success"
    assert oc.list().models == []
    with pytest.raises(ollama.ResponseError) as caught:
        oc.pull(f"{registry.host}/no/such:1")
    assert caught.value.status_code == 404


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_gemma_by_its_ollama_name_answers_constrained_json(
    daemon: DaemonHandle, gemma_gguf: Path
) -> None:
    """Ollama's name `gemma3:270M-Q4_K_M` is Docker's `ai/gemma3:270M-Q4_K_M`; `format: "json"`
    and a JSON schema hold the real model's answer to valid JSON."""
    daemon.add_model("ai/gemma3:270M-Q4_K_M", gemma_gguf)
    # Grammar-constrained sampling over Gemma's 262k-token vocabulary is slow on a shared CPU.
    oc = ollama.Client(host=f"http://127.0.0.1:{daemon.port}", timeout=240)
    assert [m.model for m in oc.list().models] == ["ai/gemma3:270M-Q4_K_M"]
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 24}},
        "required": ["capital"],
    }
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    answer = oc.chat(
        model="gemma3:270M-Q4_K_M",
        messages=msgs,
        format=schema,
        options={"num_predict": 40, "temperature": 0, "seed": 1},
    )
    assert answer.model == "gemma3:270M-Q4_K_M"
    value = json.loads(answer.message.content or "")
    assert isinstance(value["capital"], str)

    # The README's `ollama` example, as written but for the daemon's port.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (example,) = [
        b for b in re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M) if "ollama" in b
    ]
    example = example.replace("http://localhost:12434", f"http://127.0.0.1:{daemon.port}")
    done = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=200, check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "['ai/gemma3:270M-Q4_K_M']"
    assert out[-1] == "2"


def test_ollama_errors_and_notices_over_the_socket(served: DaemonHandle) -> None:
    """Raw curl on the Unix socket: NDJSON by default, Ollama's error shape, the num_ctx note."""
    status, text = curl(
        served,
        "POST",
        "/api/generate",
        {"model": MODEL, "prompt": "x", "options": {"num_predict": 2}},
    )
    assert status == 200
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[-1]["done"] is True
    assert all(not line["done"] for line in lines[:-1])
    status, text = curl(served, "POST", "/api/chat", {"model": MODEL, "messages": "nope"})
    assert status == 400
    assert json.loads(text) == {"error": "'messages' must be a list of messages"}
    status, text = curl(
        served, "POST", "/api/chat", {"model": MODEL, "messages": [], "options": {"top_k": "x"}}
    )
    assert status == 400
    assert "options.top_k" in json.loads(text)["error"]
    status, text = curl(served, "GET", "/api/version")
    assert status == 200
    assert json.loads(text)["version"]
    # An empty prompt loads the model, as in Ollama.
    status, text = curl(served, "POST", "/api/generate", {"model": MODEL})
    assert status == 200
    assert json.loads(text)["done_reason"] == "load"
    status, text = curl(served, "POST", "/api/generate", {"model": MODEL, "keep_alive": 0})
    assert json.loads(text)["done_reason"] == "unload"


def test_num_ctx_is_explained_in_a_header(served: DaemonHandle) -> None:
    import urllib.request

    body = {
        "model": MODEL,
        "prompt": "x",
        "stream": False,
        "options": {"num_predict": 1, "num_ctx": 8192},
    }
    req = urllib.request.Request(
        f"{served.base_url}/api/generate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        notice = r.headers["X-Modelrunner-Notice"]
        assert json.loads(r.read())["done"] is True
    assert "num_ctx=8192" in notice
    assert "512" in notice
    assert "--context-size" in notice


def test_openai_embeddings_from_a_chat_model_without_pooling(
    served: DaemonHandle, tiny_gguf: Path
) -> None:
    """Without any runtime flag: the tiny llama GGUF has no pooling metadata, yet embeds."""
    metadata = read_gguf(tiny_gguf).gguf
    assert metadata["general.architecture"] == "llama"
    assert not [k for k in metadata if "pooling" in k]
    oa = client(served)
    emb = oa.embeddings.create(model=MODEL, input=["a", "b"])
    assert len(emb.data) == 2
    assert len(emb.data[0].embedding) == 64
    _, text = curl(served, "GET", "/models/test/tiny")
    argv = json.loads(text)["llama_server_args"]["embedding"]
    assert argv[argv.index("--pooling") + 1] == "mean"


def test_explicit_pooling_flag_wins(served: DaemonHandle) -> None:
    flags = {"model": MODEL, "mode": "embedding", "runtime-flags": ["--pooling", "last"]}
    assert curl(served, "POST", "/engines/_configure", flags) == (202, "")
    _, text = curl(served, "GET", "/models/test/tiny")
    argv = json.loads(text)["llama_server_args"]["embedding"]
    assert argv.count("--pooling") == 1
    assert argv[argv.index("--pooling") + 1] == "last"
    emb = client(served).embeddings.create(model=MODEL, input="a")
    assert len(emb.data[0].embedding) == 64


def test_ollama_port_is_an_extra_listener(daemon_factory: Any, tiny_gguf: Path) -> None:
    from tests.fixtures.daemon import free_port

    port = free_port()
    d = daemon_factory(server={"ollama_port": port})
    d.add_model(MODEL, tiny_gguf)
    oc = ollama.Client(host=f"http://127.0.0.1:{port}", timeout=60)
    assert [m.model for m in oc.list().models] == ["test/tiny:latest"]
    with pytest.raises(ollama.ResponseError) as caught:
        oc.show("no/such")
    assert caught.value.status_code == 404


def test_openai_error_shape_is_unchanged(served: DaemonHandle) -> None:
    with pytest.raises(openai.NotFoundError):
        client(served).embeddings.create(model="no/such", input="a")
