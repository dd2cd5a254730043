"""The prompt cache kept across evictions (runners/kvcache.py) on the real daemon and runners.

A conversation on model A, a request to model B under ``max_loaded=1`` (A is evicted, its slots
saved), then A's next turn: llama-server's own ``timings.cache_n`` / ``prompt_n`` say whether the
prefix was processed again.  With the feature off the same steps give ``cache_n == 0``.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonHandle

pytestmark = pytest.mark.llama

A, B = "test/tiny-a", "test/tiny-b"
WORDS = " ".join(f"w{i}" for i in range(40))


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
            return response.status, raw.decode()
    finally:
        conn.close()


def chat(d: DaemonHandle, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": 2, "temperature": 0}
    status, answer = call(d, "POST", "/engines/v1/chat/completions", body)
    assert status == 200, answer
    timings: dict[str, Any] = answer["timings"]
    return timings


def turn1() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Remember these: {WORDS}"}]


def turn2() -> list[dict[str, str]]:
    return [
        *turn1(),
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "next"},
    ]


def ps(d: DaemonHandle) -> dict[str, dict[str, Any]]:
    status, rows = call(d, "GET", "/engines/ps")
    assert status == 200
    return {r["model_name"]: r for r in rows}


def manifests(d: DaemonHandle) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((d.home / "kvcache").glob("*.json"))]


def metric(d: DaemonHandle, name: str) -> int:
    _, text = call(d, "GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def two_models(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf_factory: Callable[..., Path]
) -> Callable[..., DaemonHandle]:
    def make(enabled: bool = True) -> DaemonHandle:
        d = daemon_factory(runners={"max_loaded": 1, "kv_cache": {"enabled": enabled}})
        d.add_model(A, tiny_gguf_factory(seed=0))
        d.add_model(B, tiny_gguf_factory(seed=1, name="tiny-b"))
        return d

    return make


def evict_then_return(d: DaemonHandle) -> tuple[dict[str, Any], dict[str, Any]]:
    first = chat(d, A, turn1())
    chat(d, B, [{"role": "user", "content": "hello"}])  # max_loaded=1: A is evicted
    assert set(ps(d)) == {f"{B}:latest"}
    return first, chat(d, A, turn2())


def test_next_turn_after_an_eviction_reuses_the_restored_prompt(
    two_models: Callable[..., DaemonHandle],
) -> None:
    """A's prefix comes back from disk: turn 2 processes only its new tokens."""
    d = two_models()
    first, second = evict_then_return(d)
    assert first["cache_n"] == 0
    prefix = first["prompt_n"]
    assert prefix > 100
    assert second["cache_n"] >= prefix - 8, (first, second)
    assert second["prompt_n"] < 30
    row = ps(d)[f"{A}:latest"]
    assert row["restored"] is True
    assert row["restored_tokens"] >= prefix
    assert metric(d, "modelrunner_kv_cache_saves_total") >= 1
    assert metric(d, "modelrunner_kv_cache_restores_total") == 1
    assert metric(d, "modelrunner_kv_cache_restore_hit_tokens_total") == second["cache_n"]
    assert metric(d, "modelrunner_kv_cache_bytes") > 0
    _, df = call(d, "GET", "/engines/df")
    assert df["kv_cache_disk_usage"] == metric(d, "modelrunner_kv_cache_bytes")


def test_with_the_feature_off_the_prompt_is_processed_again(
    two_models: Callable[..., DaemonHandle],
) -> None:
    """The control: the same steps without the cache re-read the whole conversation."""
    d = two_models(enabled=False)
    first, second = evict_then_return(d)
    assert second["cache_n"] == 0
    assert second["prompt_n"] > first["prompt_n"]
    assert ps(d)[f"{A}:latest"]["restored"] is False
    assert not (d.home / "kvcache").exists() or not manifests(d)


def test_a_foreign_cache_is_never_restored_and_rm_deletes_the_models_files(
    two_models: Callable[..., DaemonHandle],
) -> None:
    """Another model, or the same one with another context size, starts cold; rm cleans up."""
    d = two_models()
    chat(d, A, turn1())
    b = chat(d, B, turn1())  # B gets the same prompt, yet never A's saved cache
    assert b["cache_n"] == 0
    assert ps(d)[f"{B}:latest"]["restored"] is False
    assert {m["key"]["context_size"] for m in manifests(d)} == {512}
    # Another context size for A: its runner restarts under a new key, so nothing restores.
    status, _ = call(d, "POST", "/engines/_configure", {"model": A, "context-size": 448})
    assert status == 202
    again = chat(d, A, turn2())
    assert again["cache_n"] == 0
    assert ps(d)[f"{A}:latest"]["restored"] is False
    assert metric(d, "modelrunner_kv_cache_restores_total") == 0
    # rm A: its entries go (both context sizes), B's stay.
    chat(d, B, [{"role": "user", "content": "evict A"}])
    model_ids = {m["key"]["model_id"] for m in manifests(d)}
    assert len(model_ids) == 2
    status, _ = call(d, "DELETE", f"/models/{A}")
    assert status == 200
    left = manifests(d)
    assert left
    assert {m["key"]["model_id"] for m in left} == model_ids - {_model_id(d, A, model_ids)}
    for m in left:
        for row in m["slots"]:
            assert (d.home / "kvcache" / row["file"]).is_file()
    assert len(list((d.home / "kvcache").glob("*.bin"))) == sum(len(m["slots"]) for m in left)


def _model_id(d: DaemonHandle, ref: str, candidates: set[str]) -> str:
    """The id *ref* had: the candidate B does not own."""
    status, model = call(d, "GET", f"/models/{B}")
    assert status == 200
    (other,) = candidates - {model["id"]}
    return other


@pytest.mark.parametrize("stop", ["daemon_restart", "unload"])
def test_every_planned_stop_saves_and_the_next_load_restores(
    two_models: Callable[..., DaemonHandle], stop: str
) -> None:
    """Shutdown (SIGTERM, then a new daemon on the same home) and `unload` keep it as well."""
    d = two_models()
    first = chat(d, A, turn1())
    if stop == "daemon_restart":
        d.restart()
    else:
        status, _ = call(d, "POST", "/engines/unload", {"models": [A]})
        assert status == 200
        assert not ps(d)
    second = chat(d, A, turn2())
    assert second["cache_n"] >= first["prompt_n"] - 8, (first, second)
    assert ps(d)[f"{A}:latest"]["restored"] is True
