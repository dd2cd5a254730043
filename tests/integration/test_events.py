"""Live events (`GET /engines/events`, `modelrunner ps -w`) against the real daemon: runner
transitions in order, and a client that never reads dropped while everyone else is served."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_daemon import client, curl
from tests.integration.test_request_log import LiveCLI

pytestmark = pytest.mark.llama

A, B = "test/a", "test/b"


class Follower:
    """`curl -N` on the events stream; its frames parsed into a queue by a reader thread."""

    def __init__(self, d: DaemonHandle, query: str = "") -> None:
        self.proc = subprocess.Popen(
            [
                "curl",
                "-sSN",
                "--unix-socket",
                str(d.socket_path),
                "-H",
                "Accept: text/event-stream",
                f"http://localhost/engines/events{query}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.next(lambda e: e["type"] == "connected")  # subscribed: what follows is complete

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("data:"):
                self.events.put(json.loads(line[5:]))

    def next(self, match: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if match(event):
                return event

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@contextmanager
def follow(d: DaemonHandle, query: str = "") -> Iterator[Follower]:
    f = Follower(d, query)
    try:
        yield f
    finally:
        f.close()


def runner(event: dict[str, Any]) -> bool:
    return event["type"] == "runner"


@pytest.fixture
def two_models(daemon_factory: Any, tiny_gguf_factory: Any) -> DaemonHandle:
    d: DaemonHandle = daemon_factory(runners={"max_loaded": 1}, server={"events_queue": 16})
    d.add_model(A, tiny_gguf_factory(seed=1))
    d.add_model(B, tiny_gguf_factory(seed=2))
    return d


def test_load_eviction_and_unload_arrive_in_order(two_models: DaemonHandle) -> None:
    """Model A loads; B evicts it (max_loaded=1); B is unloaded: the stream says so in order."""
    d = two_models
    oa = client(d)
    with follow(d) as f:
        oa.completions.create(model=A, prompt="x", max_tokens=1)
        oa.completions.create(model=B, prompt="x", max_tokens=1)
        status, _ = curl(d, "POST", "/engines/unload", {"models": [B]})
        assert status == 200
        seen = [f.next(runner) for _ in range(8)]
    got = [(e["state"], e["model"], e["reason"]) for e in seen]
    assert got == [
        ("loading", "test/a:latest", None),
        ("ready", "test/a:latest", None),
        ("stopping", "test/a:latest", "evicted"),
        ("stopped", "test/a:latest", "evicted"),
        ("loading", "test/b:latest", None),
        ("ready", "test/b:latest", None),
        ("stopping", "test/b:latest", "unload"),
        ("stopped", "test/b:latest", "unload"),
    ]
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs)
    assert all(e["mode"] == "completion" and isinstance(e["pid"], int) for e in seen)
    # Without Accept: text/event-stream, the kept events as JSON (requests counters excluded).
    status, text = curl(d, "GET", f"/engines/events?since={seqs[1]}")
    assert status == 200
    kept = [(e["state"], e["model"]) for e in json.loads(text) if e["type"] == "runner"]
    assert kept[:2] == [("stopping", "test/a:latest"), ("stopped", "test/a:latest")]


def test_request_counters(two_models: DaemonHandle) -> None:
    """Each request is counted on the stream: in flight when it starts, total when it ends."""
    d = two_models
    with follow(d) as f:
        client(d).completions.create(model=A, prompt="x", max_tokens=1)
        start = f.next(lambda e: e["type"] == "requests")
        end = f.next(lambda e: e["type"] == "requests")
    assert (start["model"], start["in_flight"], start["total"]) == ("test/a:latest", 1, 0)
    assert (end["in_flight"], end["total"], end["errors"]) == (0, 1, 0)


def _stalled_client(d: DaemonHandle) -> socket.socket:
    """A client that asks for the event stream and then never reads a byte."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(str(d.socket_path))
    sock.sendall(
        b"GET /engines/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    return sock


def _flood(d: DaemonHandle, n: int) -> list[int]:
    """*n* preload-only requests (each one counted on the event stream) with one curl process
    on one keep-alive connection; their statuses."""
    body = json.dumps({"model": A, "prompt": "x"})
    url = "http://localhost/engines/llama.cpp/v1/completions"
    argv = ["curl", "-sS", "--unix-socket", str(d.socket_path), "-o", "/dev/null"]
    argv += ["-w", "%{http_code}\n", "-H", "X-Preload-Only: true"]
    argv += ["-H", "Content-Type: application/json", "--data-binary", body]
    out = subprocess.run(argv + [url] * n, capture_output=True, text=True, timeout=300, check=True)
    return [int(s) for s in out.stdout.split()]


def test_a_client_that_never_reads_is_dropped(two_models: DaemonHandle) -> None:
    """The stalled client's queue (16) fills and it is dropped; every request meanwhile gets its
    answer and a client that reads receives every event."""
    d = two_models
    client(d).completions.create(model=A, prompt="x", max_tokens=1)  # loaded: floods are cheap
    started = time.monotonic()
    _flood(d, 100)
    before_ms = (time.monotonic() - started) * 10
    stalled = _stalled_client(d)
    with follow(d) as reader:
        rounds, statuses, during_ms = 0, list[int](), 0.0
        while "sse.client_dropped" not in d.log_text():
            rounds += 1
            assert rounds <= 40, "the stalled client was never dropped"
            started = time.monotonic()
            statuses += _flood(d, 200)
            during_ms = (time.monotonic() - started) * 5
        # Every request of the flood was answered while the stalled client held its stream.
        assert set(statuses) == {200}
        # The reading client saw both counters of the last request: it was not dropped.
        total = len(statuses) + 101
        reader.next(lambda e: e["type"] == "requests" and e["total"] == total, timeout=60)
    print(
        f"stalled client dropped after {len(statuses)} requests; preload request "
        f"{before_ms:.2f} ms before, {during_ms:.2f} ms while stalled"
    )
    # The daemon closed the stalled connection: its buffered bytes, then end of stream.
    stalled.settimeout(30)
    while stalled.recv(1 << 16):
        pass
    stalled.close()
    status, text = curl(d, "GET", "/engines/ps")
    assert status == 200
    assert json.loads(text)[0]["model_name"] == "test/a:latest"
    status, text = curl(d, "GET", "/metrics")
    assert 'modelrunner_stream_clients_dropped_total{stream="events"} 1' in text


def test_ps_watch_prints_each_runner_change(served_one: DaemonHandle) -> None:
    """`modelrunner ps -w` prints a line and the new table when a runner loads."""
    d = served_one
    cli = LiveCLI(d, "ps", "-w")
    try:
        assert "MODEL NAME" in cli.lines.get(timeout=30)  # the first (empty) table: subscribed
        client(d).completions.create(model=A, prompt="x", max_tokens=1)
        text = ""
        while "ready test/a:latest" not in text:
            text += cli.lines.get(timeout=60)
        assert "completion, pid" in text
        while "test/a" not in (line := cli.lines.get(timeout=30)) or "MODEL NAME" in line:
            pass
        assert "llama.cpp" in line
    finally:
        cli.close()


@pytest.fixture
def served_one(daemon: DaemonHandle, tiny_gguf: Path) -> DaemonHandle:
    daemon.add_model(A, tiny_gguf)
    return daemon


def test_push_and_pull_progress(daemon: DaemonHandle, registry: Any, tiny_gguf: Path) -> None:
    """A push and a pull through the real registry: their progress and success on the stream."""
    ref = f"{registry.host}/events/tiny:v1"
    daemon.add_model(ref, tiny_gguf)
    with follow(daemon) as f:
        status, text = curl(daemon, "POST", f"/models/{ref}/push")
        assert status == 200, text
        pushed = f.next(lambda e: e["type"] == "push" and e["status"] == "success")
        assert curl(daemon, "DELETE", f"/models/{ref}")[0] == 200
        status, text = curl(daemon, "POST", "/models/create", {"from": ref})
        assert status == 200, text
        progress = f.next(lambda e: e["type"] == "pull")
        done = f.next(lambda e: e["type"] == "pull" and e["status"] == "success")
    assert pushed["model"] == ref
    assert (progress["model"], progress["status"]) == (ref, "progress")
    assert progress["total"] > 0
    assert done["message"] == "Model pulled successfully"


def test_shutdown_ends_the_streams(two_models: DaemonHandle) -> None:
    """SIGTERM with an events follower and a request-log follower attached: both streams end
    (curl exits on its own) and the daemon exits 0."""
    d = two_models
    events = Follower(d)
    log = LiveCLI(d, "requests", "-f")
    assert "Connected" in log.stderr_line()
    assert d.stop() == 0
    assert events.proc.wait(30) == 0
    assert log.proc.wait(30) == 0
    assert log.stderr_line().startswith("Stream closed")


def test_a_crash_is_announced(served_one: DaemonHandle) -> None:
    """A runner killed under the daemon: `crashed` with its pid and exit code."""
    d = served_one
    with follow(d) as f:
        client(d).completions.create(model=A, prompt="x", max_tokens=1)
        ready = f.next(lambda e: e["type"] == "runner" and e["state"] == "ready")
        os.kill(ready["pid"], signal.SIGKILL)
        crashed = f.next(lambda e: e["type"] == "runner" and e["state"] != "ready")
    assert (crashed["state"], crashed["reason"]) == ("crashed", "crashed")
    assert crashed["pid"] == ready["pid"]
    assert crashed["exit_code"] == -signal.SIGKILL
