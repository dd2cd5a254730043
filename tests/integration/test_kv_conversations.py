"""Every conversation's prompt cache kept on disk (runners/kv_store.py), on the real daemon.

Six conversations on model A (4 slots), a request to model B under ``max_loaded=1`` (A is
evicted) or a daemon restart, then each conversation's next turn: llama-server's own
``timings.cache_n`` says whether its prefix came back.  With ``conversations: 0`` (the slots at
the stop only) the same steps bring back one conversation, the last.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_kvcache import A, B, call, metric, ps

pytestmark = pytest.mark.llama


def first(n: int, words: int = 30) -> list[dict[str, str]]:
    text = " ".join(f"c{n}w{i}" for i in range(words))
    return [{"role": "user", "content": f"Conversation {n}. Remember: {text}"}]


def second(n: int, words: int = 30) -> list[dict[str, str]]:
    more = [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    return [*first(n, words), *more]


def chat(
    d: DaemonHandle, messages: list[dict[str, str]], model: str = A, max_tokens: int = 2
) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    status, answer = call(d, "POST", "/engines/v1/chat/completions", body)
    assert status == 200, answer
    return dict(answer)


@pytest.fixture
def make(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf_factory: Callable[..., Path]
) -> Callable[..., DaemonHandle]:
    def factory(**kv: Any) -> DaemonHandle:
        d = daemon_factory(runners={"max_loaded": 1, "kv_cache": kv})
        d.add_model(A, tiny_gguf_factory(seed=0))
        d.add_model(B, tiny_gguf_factory(seed=1, name="tiny-b"))
        return d

    return factory


def away(d: DaemonHandle, how: str) -> None:
    if how == "swap":
        chat(d, [{"role": "user", "content": "hello"}], model=B)  # A is evicted
        assert set(ps(d)) == {f"{B}:latest"}
    else:
        d.restart()


def conversation_manifests(d: DaemonHandle) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in (d.home / "kvcache").glob("*.json")]
    return [m for m in found if "conversation" in m]


@pytest.mark.parametrize("how", ["swap", "daemon_restart"])
def test_every_conversation_comes_back_after_a_swap_or_a_restart(
    make: Callable[..., DaemonHandle], how: str
) -> None:
    """Six conversations, more than the four slots: each one's next turn reuses its prefix."""
    d = make()
    firsts = [chat(d, first(n))["timings"] for n in range(6)]
    assert all(t["cache_n"] < 40 for t in firsts)  # the template's start, "Conversation "
    away(d, how)
    for n in range(6):
        timings = chat(d, second(n))["timings"]
        assert timings["cache_n"] >= firsts[n]["prompt_n"] - 8, (n, firsts[n], timings)
    row = ps(d)[f"{A}:latest"]["kv_conversations"]
    assert row["on_disk"] >= 6
    assert row["hits"] == 6
    assert row["bytes"] > 0
    assert metric(d, "modelrunner_kv_cache_conversation_hits_total") == 6
    assert metric(d, "modelrunner_kv_cache_conversations") >= 6


def test_without_the_feature_only_the_last_conversation_comes_back(
    make: Callable[..., DaemonHandle],
) -> None:
    """The control: ``conversations: 0`` keeps the slots a stop finds: one in six at best
    (the first return takes the restored slot's place)."""
    d = make(conversations=0)
    firsts = [chat(d, first(n))["timings"] for n in range(6)]
    away(d, "swap")
    back = [chat(d, second(n))["timings"]["cache_n"] >= firsts[n]["prompt_n"] - 8 for n in range(6)]
    assert sum(back) <= 1, back


def test_the_count_bound_drops_the_least_recently_used(make: Callable[..., DaemonHandle]) -> None:
    """Three kept: a conversation used again outlives two that were saved after it."""
    d = make(conversations=3)
    firsts = [chat(d, first(n))["timings"] for n in range(4)]  # c0, c1, c2 saved on the way
    chat(d, second(0))  # c3 saved: c1 is the least recently used and goes
    chat(d, first(4))  # c0's second turn saved (replacing its first)
    away(d, "swap")  # c4 saved: c2 goes
    assert len(conversation_manifests(d)) == 3
    later = {0: [*second(0), {"role": "assistant", "content": "x"}], 3: second(3)}
    later.update({1: second(1), 2: second(2)})
    # The kept ones first: each return saves what it displaces, which drops the oldest again.
    hits = {}
    for n in (3, 0, 1, 2):
        hits[n] = chat(d, later[n])["timings"]["cache_n"] >= firsts[n]["prompt_n"] - 8
    assert hits == {3: True, 0: True, 1: False, 2: False}


def test_a_damaged_cache_file_is_refused_and_deleted(make: Callable[..., DaemonHandle]) -> None:
    """A truncated slot file fails its checksum: a warning, a full re-read, never a restore."""
    d = make()
    firsts = [chat(d, first(n))["timings"] for n in range(2)]
    away(d, "swap")
    oldest = min(conversation_manifests(d), key=lambda m: m["saved_at"])  # conversation 0's
    path = d.home / "kvcache" / oldest["slots"][0]["file"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    timings = chat(d, second(0))["timings"]
    assert timings["cache_n"] == 0
    assert timings["prompt_n"] > firsts[0]["prompt_n"]
    assert not path.exists()
    assert metric(d, "modelrunner_kv_cache_restore_failures_total") == 1
    assert "kvcache.restore_failed" in d.log_text()
    assert chat(d, second(1))["timings"]["cache_n"] >= firsts[1]["prompt_n"] - 8


def run_concurrently(d: DaemonHandle, turn: Callable[..., list[dict[str, str]]]) -> list[str]:
    # Three short ones at once: they share the tiny model's 512-token unified KV cache.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda n: chat(d, turn(n, 6), max_tokens=8), range(3)))
    return [a["choices"][0]["message"]["content"] for a in answers]


def test_concurrent_conversations_never_get_each_others_cache(
    make: Callable[..., DaemonHandle],
) -> None:
    """Three at once, a swap, three at once again: the answers are those of a run without the
    prompt cache (temperature 0), so no conversation continued another's."""
    answers = {}
    for enabled in (True, False):
        d = make(enabled=enabled)
        run_concurrently(d, first)
        away(d, "swap")
        answers[enabled] = run_concurrently(d, second)
        d.close()
    assert answers[True] == answers[False]


def test_the_aiohttp_lane_chooses_the_slot_too(make: Callable[..., DaemonHandle]) -> None:
    """Ollama's chat (served by aiohttp, not the fast lane) takes the same path."""
    d = make()

    def ollama(msgs: list[dict[str, str]]) -> None:
        options = {"num_predict": 2, "temperature": 0}
        body = {"model": A, "messages": msgs, "stream": False, "options": options}
        status, answer = call(d, "POST", "/api/chat", body)
        assert status == 200, answer

    ollama(first(0))
    ollama(first(1))  # conversation 0 is saved before it starts
    away(d, "swap")
    ollama(second(0))
    assert ps(d)[f"{A}:latest"]["kv_conversations"]["hits"] == 1
    assert metric(d, "modelrunner_kv_cache_restored_tokens_total") > 100
