"""A fast stream's end reaches the client when the runner ends it, not when a hold's timer does.

The fast lane holds a quick stream (stops reading the runner for a few ms, so that tokens share
a read and a write). llama-server closes a streamed answer's connection right after its last
chunk; that hang-up must end a hold at once, and no hold may gather so much that the runner's
writes block (an AF_UNIX socket takes ~40 unread small writes), which made a fast stream's last
batch arrive 15-40 ms after it was generated, with the default 2 ms hold. Lateness is measured
against llama-server's own clock: the time from sending the request to the answer's last byte,
less the runner's ``prompt_ms + predicted_ms``, through the daemon and straight from the
runner's socket, alternated."""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.daemon import DaemonHandle

pytestmark = pytest.mark.llama

MODEL = "test/tiny"
TOKENS = 256
ROUNDS = 5
SLACK_S = 0.008  # beyond the runner's own median (a stalled hold's timer: 15-40 ms)


def _stream(sock: socket.socket, path: str) -> float:
    """Seconds from the request to the answer's last byte, less the runner's own time."""
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": TOKENS,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.settimeout(60)
    sent = time.perf_counter()
    sock.sendall(head.encode() + body)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        ended = time.perf_counter()
    sock.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert data.endswith(b"0\r\n\r\n"), data[-200:]
    timings = json.loads(data[data.rindex(b'"timings":') + 10 :].split(b"}", 1)[0] + b"}")
    return ended - sent - (timings["prompt_ms"] + timings["predicted_ms"]) / 1000


def test_a_held_stream_ends_when_the_runner_closes_not_when_the_timer_fires(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path
) -> None:
    d = daemon_factory()  # the default hold: 2 ms, growing to 16
    d.add_model(MODEL, tiny_gguf)

    def via_daemon() -> float:
        return _stream(socket.create_connection(("127.0.0.1", d.port)), "/v1/chat/completions")

    via_daemon()  # loads the model
    (runner,) = (d.home / "run").glob("r-*.sock")

    def direct() -> float:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(runner))
        return _stream(s, "/v1/chat/completions")

    daemon_late, direct_late = [], []
    for i in range(ROUNDS):
        pair = (via_daemon, direct) if i % 2 == 0 else (direct, via_daemon)
        for run in pair:
            (daemon_late if run is via_daemon else direct_late).append(run())
    assert statistics.median(daemon_late) <= statistics.median(direct_late) + SLACK_S, (
        f"a stream's end waited (s beyond the runner's own time): daemon "
        f"{[round(x, 3) for x in daemon_late]}, direct {[round(x, 3) for x in direct_late]}"
    )
