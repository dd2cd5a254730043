"""A runner that dies in the middle of an Anthropic or Responses stream: the answer (already
200) ends with that API's own error event, and the daemon loads the model again for the next."""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.http_json import call

pytestmark = pytest.mark.llama

MODEL = "test/long"


def runner_pid(d: DaemonHandle) -> int:
    _, rows = call(d, "GET", "/engines/ps")
    (row,) = rows
    pid: int = row["pid"]
    return pid


def kill_mid_stream(d: DaemonHandle, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Start a long stream, SIGKILL the runner after its first bytes; the events it got."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.read1(4096)
        assert first
        os.kill(runner_pid(d), signal.SIGKILL)
        text = (first + resp.read()).decode()
    finally:
        conn.close()
    events = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        name = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = next((ln[6:] for ln in lines if ln.startswith("data: ")), None)
        if data is not None:
            events.append({"event": name, "data": json.loads(data)})
    return events


@pytest.fixture
def long_served(daemon: DaemonHandle, tiny_gguf_factory: Callable[..., Path]) -> DaemonHandle:
    # An 8192-token context: the answer lasts long enough to be cut (512 tokens end in < 1 s).
    daemon.add_model(MODEL, tiny_gguf_factory(seed=3, name="long", ctx=8192))
    return daemon


def test_streams_cut_by_a_dead_runner_end_in_their_own_error_event(
    long_served: DaemonHandle,
) -> None:
    """Anthropic's `event: error` with its error object; Responses' `error` + `response.failed`."""
    ant = kill_mid_stream(
        long_served,
        "/v1/messages",
        {
            "model": MODEL,
            "max_tokens": 8000,
            "stream": True,
            "messages": [{"role": "user", "content": "go"}],
        },
    )
    assert ant[0]["event"] == "message_start"
    last = ant[-1]
    assert last["event"] == "error"
    assert last["data"]["type"] == "error"
    assert last["data"]["error"]["type"] == "api_error"
    assert last["data"]["error"]["message"]

    resp = kill_mid_stream(
        long_served,
        "/v1/responses",
        {"model": MODEL, "max_output_tokens": 8000, "stream": True, "input": "go"},
    )
    kinds = [e["event"] for e in resp]
    assert kinds[0] == "response.created"
    assert kinds[-2:] == ["error", "response.failed"]
    failed = resp[-1]["data"]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["message"]
    assert [e["data"]["sequence_number"] for e in resp] == list(range(len(resp)))
    status, body = call(
        long_served, "POST", "/v1/responses", {"model": MODEL, "input": "x", "max_output_tokens": 2}
    )
    assert status == 200, body
