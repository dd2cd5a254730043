"""Push and pull through the daemon against a real local registry (Debian's docker-registry):
Docker's progress lines, then a success line; failures before streaming keep their status."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import ollama
import pytest

from modelrunner.distribution.gguf import read_gguf
from tests.fixtures.daemon import DaemonHandle
from tests.fixtures.registry import oras_push
from tests.integration.test_daemon import client, curl

pytestmark = [pytest.mark.llama, pytest.mark.registry]


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def test_push_rm_pull_with_progress(daemon: DaemonHandle, registry: Any, tiny_gguf: Path) -> None:
    ref = f"{registry.host}/test/tiny:v1"
    daemon.add_model(ref, tiny_gguf)
    status, text = curl(
        daemon, "POST", f"/models/{ref}/push", headers=("Accept: application/json",)
    )
    assert status == 200, text
    pushed = lines(text)
    assert pushed[-1]["type"] == "success"
    assert {p["mode"] for p in pushed} == {"push"}
    status, text = curl(daemon, "DELETE", f"/models/{ref}")
    assert status == 200
    assert curl(daemon, "GET", "/models") == (200, "[]")

    status, text = curl(
        daemon, "POST", "/models/create", {"from": ref}, headers=("Accept: application/json",)
    )
    assert status == 200, text
    pulled = lines(text)
    progress = [p for p in pulled if p["type"] == "progress"]
    assert progress
    biggest = max(p["layer"]["size"] for p in progress)
    gguf_layer = [p for p in progress if p["layer"]["size"] == biggest][-1]
    assert gguf_layer["layer"]["id"].startswith("sha256:")
    assert gguf_layer["layer"]["current"] == gguf_layer["layer"]["size"]
    assert {p["mode"] for p in pulled} == {"pull"}
    assert pulled[-1]["type"] == "success"
    (model,) = json.loads(curl(daemon, "GET", "/models")[1])
    assert model["tags"] == [ref]
    status, text = curl(daemon, "GET", f"/models/{ref}?remote=true")  # from the registry
    assert status == 200, text
    remote = json.loads(text)
    assert remote["id"] == model["id"]
    assert remote["config"]["format"] == "gguf"
    assert "tags" not in remote

    # Docker's CLI sends no Accept: text/plain, HTML-escaped lines (it unescapes them).
    status, text = curl(daemon, "POST", "/models/create", {"from": ref})
    assert status == 200
    assert '"' not in text
    assert lines(html.unescape(text))[-1]["type"] == "success"


def test_pull_failures_before_streaming_keep_their_status(
    daemon: DaemonHandle, registry: Any
) -> None:
    status, text = curl(
        daemon,
        "POST",
        "/models/create",
        {"from": f"{registry.host}/no/such:1"},
        headers=("Accept: application/json",),
    )
    assert status == 404, text
    assert "no/such" in json.loads(text)["error"]
    status, text = curl(daemon, "POST", "/models/create", {"from": "Bad Ref"})
    assert status == 400
    status, text = curl(daemon, "POST", f"/models/{registry.host}/absent:1/push")
    assert status == 404


def test_an_artifact_another_tool_made_pulls_and_runs(
    daemon: DaemonHandle, registry: Any, tiny_gguf: Path, tmp_path: Path
) -> None:
    """oras pushes a bare model artifact (Docker's media types, a config with only the format,
    no annotations); the daemon pulls it and serves a completion from it."""
    ref = f"{registry.host}/other/tool-made:v1"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {"format": "gguf"}, "extra": {"ignored": True}}))
    oras_push(registry.host, ref, tiny_gguf, config)
    status, text = curl(
        daemon, "POST", "/models/create", {"from": ref}, headers=("Accept: application/json",)
    )
    assert status == 200, text
    assert lines(text)[-1]["type"] == "success"
    body = {"model": ref, "prompt": "once upon", "max_tokens": 2}
    status, text = curl(daemon, "POST", "/engines/llama.cpp/v1/completions", body)
    assert status == 200, text
    assert json.loads(text)["choices"][0]["text"] is not None


def test_an_artifact_without_gguf_metadata_embeds(
    daemon: DaemonHandle, registry: Any, tiny_gguf: Path, tmp_path: Path
) -> None:
    """Another tool's artifact: a Docker v0.1 config with format, quantization, parameters and
    size but no ``gguf`` map, pushed by oras and pulled by the daemon.  The tiny llama declares
    no pooling, which only its header says: embeddings answer through the real `openai` and
    `ollama` packages (llama-server would refuse the runner's default pooling, ``none``)."""
    assert not [k for k in read_gguf(tiny_gguf).gguf if "pooling" in k]
    ref = f"{registry.host}/other/no-metadata:v1"
    config = tmp_path / "config.json"
    docker_v01 = {"format": "gguf", "quantization": "F32", "parameters": "131K", "size": "512KiB"}
    config.write_text(json.dumps({"config": docker_v01}))
    oras_push(registry.host, ref, tiny_gguf, config)
    status, text = curl(
        daemon, "POST", "/models/create", {"from": ref}, headers=("Accept: application/json",)
    )
    assert status == 200, text
    (model,) = json.loads(curl(daemon, "GET", "/models")[1])
    assert "gguf" not in model["config"]

    emb = client(daemon).embeddings.create(model=ref, input=["a", "b"])
    assert [len(d.embedding) for d in emb.data] == [64, 64]
    oc = ollama.Client(host=f"http://127.0.0.1:{daemon.port}", timeout=60)
    embedded = oc.embed(model=ref, input="a")
    assert len(embedded.embeddings) == 1
    assert len(embedded.embeddings[0]) == 64
