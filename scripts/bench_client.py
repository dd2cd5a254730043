#!/usr/bin/env python3
"""The benchmark's client, in a process of its own with a minimal HTTP client (http.client),
so that its own cost can neither dominate what bench_proxy measures nor share the daemon's
interpreter.  Reads one JSON job from argv, prints one JSON result.

Job: ``{"mode": "warm"|"stream"|"concurrent", "n": N, "seed": S, "targets": {key: {"unix":
PATH | "tcp": [HOST, PORT], "prefix": "/engines", "model": NAME}}, "body_pad": BYTES}``.
- warm: N non-streamed chats (``max_tokens`` 1) per target, interleaved request by request in a
  fresh seeded random order, on one kept-alive connection per target: each request's wall (s).
- stream: N streams of 64 tokens (``ignore_eos``; ``"tokens": K`` for another length) per
  target, interleaved likewise, each on a connection of its own (llama-server closes a streamed
  answer's connection): wall and tokens.
- lag: N streams (``"tokens": K``, ``timings_per_token``) per target, interleaved: for each, the
  receive time of every token (s from the request) with the runner's ``predicted_ms`` for it,
  and the end (the answer's last byte, and the runner's ``prompt_ms + predicted_ms``).
- concurrent: 16 threads, one stream each, per target in turn, the targets in a fresh seeded
  order each time: total tokens/s, N times.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import sys
import threading
import time
from typing import Any

TOKENS = 64
CONCURRENCY = 16


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def connect(t: dict[str, Any]) -> http.client.HTTPConnection:
    if "unix" in t:
        return UnixConnection(t["unix"])
    host, port = t["tcp"]
    conn = http.client.HTTPConnection(host, port)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def body(t: dict[str, Any], pad: int, **extra: Any) -> bytes:
    messages = [{"role": "user", "content": "Say hello."}]
    if pad:
        # A long conversation: earlier turns the runner's template has to read (cache-hot).
        turn = "word " * 200
        while sum(len(m["content"]) for m in messages) < pad:
            messages.insert(0, {"role": "assistant", "content": turn})
            messages.insert(0, {"role": "user", "content": turn})
    return json.dumps({"model": t["model"], "messages": messages, **extra}).encode()


def warm(
    conn: http.client.HTTPConnection, t: dict[str, Any], payload: bytes, ok: tuple[int, ...]
) -> float:
    t0 = time.perf_counter()
    conn.request(
        "POST",
        t["prefix"] + "/v1/chat/completions",
        payload,
        {"Content-Type": "application/json"},
    )
    r = conn.getresponse()
    data = r.read()
    wall = time.perf_counter() - t0
    if r.status not in ok:
        raise SystemExit(f"{t}: {r.status} {data[:200]!r}")
    return wall


def stream(t: dict[str, Any], payload: bytes) -> tuple[float, int]:
    conn = connect(t)
    t0 = time.perf_counter()
    conn.request(
        "POST",
        t["prefix"] + "/v1/chat/completions",
        payload,
        {"Content-Type": "application/json", "Connection": "close"},
    )
    r = conn.getresponse()
    if r.status != 200:
        raise SystemExit(f"{t}: {r.status} {r.read()[:200]!r}")
    tokens = 0
    for line in r:
        if line.startswith(b"data: ") and b'"content"' in line:
            tokens += 1
    wall = time.perf_counter() - t0
    conn.close()
    return wall, tokens


def lag(t: dict[str, Any], payload: bytes) -> dict[str, Any]:
    """One stream read off a raw socket, each read timed (every event in it shares the time)."""
    if "unix" in t:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(t["unix"])
    else:
        sock = socket.create_connection(tuple(t["tcp"]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = (
        f"POST {t['prefix']}/v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    reads: list[tuple[float, bytes]] = []
    t0 = time.perf_counter()
    sock.sendall(head + payload)
    while data := sock.recv(65536):
        reads.append((time.perf_counter() - t0, data))
    sock.close()
    tokens: list[tuple[float, float]] = []
    end = {"received": reads[-1][0], "runner": 0.0}
    rest = b""
    for at, data in reads:
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            i = line.find(b'"timings":')
            if not line.startswith(b"data: {") or i < 0:
                continue
            timings = json.loads(line[i + 10 :].split(b"}", 1)[0] + b"}")
            end["runner"] = (timings["prompt_ms"] + timings["predicted_ms"]) / 1000
            if b'"content"' in line:
                tokens.append((at, timings["predicted_ms"] / 1000))
    return {"tokens": tokens, "end": end}


def main() -> None:
    job = json.loads(sys.argv[1])
    targets: dict[str, dict[str, Any]] = job["targets"]
    rng = random.Random(job.get("seed", 0))  # noqa: S311 (an order, not a secret)
    order = list(targets)
    out: dict[str, Any] = {k: [] for k in targets}
    pad = job.get("body_pad", 0)
    if job["mode"] == "warm":
        payloads = {k: body(t, pad, max_tokens=1) for k, t in targets.items()}
        conns = {k: connect(t) for k, t in targets.items()}
        # The long conversation exceeds the tiny model's 512-token context: the runner answers
        # 400 after reading it all, and the proxy's work (read, parse, forward 256 KB) is whole.
        ok = (200, 400) if pad else (200,)
        for _ in range(job["n"]):
            rng.shuffle(order)
            for k in order:
                out[k].append(warm(conns[k], targets[k], payloads[k], ok))
    elif job["mode"] == "stream":
        payloads = {
            k: body(t, pad, max_tokens=job.get("tokens", TOKENS), stream=True, ignore_eos=True)
            for k, t in targets.items()
        }
        for _ in range(job["n"]):
            rng.shuffle(order)
            for k in order:
                out[k].append(stream(targets[k], payloads[k]))
    elif job["mode"] == "lag":
        payloads = {
            k: body(
                t,
                0,
                max_tokens=job.get("tokens", TOKENS),
                stream=True,
                ignore_eos=True,
                temperature=0,
                timings_per_token=True,
            )
            for k, t in targets.items()
        }
        for _ in range(job["n"]):
            rng.shuffle(order)
            for k in order:
                out[k].append(lag(targets[k], payloads[k]))
    else:
        for _ in range(job["n"]):
            rng.shuffle(order)
            for k in order:
                payload = body(targets[k], 0, max_tokens=TOKENS, stream=True, ignore_eos=True)
                counts = [0] * CONCURRENCY

                def one(
                    i: int, k: str = k, payload: bytes = payload, counts: list[int] = counts
                ) -> None:
                    counts[i] = stream(targets[k], payload)[1]

                threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENCY)]
                t0 = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                out[k].append(sum(counts) / (time.perf_counter() - t0))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
