#!/usr/bin/env python3
"""What Ollama's translation costs: the same tiny model through ``/api/chat`` and through the
OpenAI route it is translated onto, on the same daemon (TCP), requests alternated.

Measured: warm non-streamed chats (one token: ``num_predict`` 1 / ``max_tokens`` 1) and the time
to the first streamed content (NDJSON line / SSE event); medians and p90.  ``--write`` updates the
"## Ollama API" section of docs/benchmarks.md.

    .venv/bin/python scripts/bench_ollama.py --requests 200 --write
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.runners.locate import locate  # noqa: E402
from scripts.bench_proxy import MODEL, daemon  # noqa: E402
from scripts.benchdoc import write_section  # noqa: E402
from scripts.machine import machine_line  # noqa: E402
from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402

MESSAGES = [{"role": "user", "content": "hi"}]
Probe = Callable[[aiohttp.ClientSession, str], Awaitable[float]]


async def one_token(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> float:
    t0 = time.perf_counter()
    async with session.post(url, json=body) as r:
        await r.read()
        assert r.status == 200, r.status
    return time.perf_counter() - t0


async def ollama_warm(session: aiohttp.ClientSession, base: str) -> float:
    body = {"model": MODEL, "messages": MESSAGES, "stream": False, "options": {"num_predict": 1}}
    return await one_token(session, f"{base}/api/chat", body)


async def openai_warm(session: aiohttp.ClientSession, base: str) -> float:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
    return await one_token(session, f"{base}/engines/v1/chat/completions", body)


async def ollama_ttft(session: aiohttp.ClientSession, base: str) -> float:
    body = {"model": MODEL, "messages": MESSAGES, "options": {"num_predict": 8}}
    t0 = time.perf_counter()
    async with session.post(f"{base}/api/chat", json=body) as r:
        async for line in r.content:
            if b'"content": ""' not in line:
                first = time.perf_counter() - t0
                break
        await r.read()
    return first


async def openai_ttft(session: aiohttp.ClientSession, base: str) -> float:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    t0 = time.perf_counter()
    headers = {"Connection": "close"}
    async with session.post(f"{base}/engines/v1/chat/completions", json=body, headers=headers) as r:
        async for line in r.content:
            if line.startswith(b"data: ") and b'"content":"' in line.replace(b" ", b""):
                first = time.perf_counter() - t0
                break
        await r.read()
    return first


async def alternate(
    session: aiohttp.ClientSession, base: str, probes: dict[str, Probe], n: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in probes}
    keys = list(probes)
    for i in range(n):
        for key in keys[i % 2 :] + keys[: i % 2]:
            out[key].append(await probes[key](session, base))
    return out


def row(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[max(0, math.ceil(len(ms) * 0.9) - 1)]
    return f"| {name} | {statistics.median(ms):.2f} | {p90:.2f} | {len(ms)} |"


async def run(args: argparse.Namespace) -> str:
    engine = await locate(None)
    home = Path(tempfile.mkdtemp(prefix="mr-bench-", dir="/tmp"))
    try:
        gguf = build_tiny_gguf(home / "tiny.gguf")
        async with daemon(home / "d", gguf, engine.path) as (_sock, port, _pid):
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                await alternate(session, base, {"o": ollama_warm, "a": openai_warm}, 5)
                warm = await alternate(
                    session, base, {"ollama": ollama_warm, "openai": openai_warm}, args.requests
                )
                ttft = await alternate(
                    session,
                    base,
                    {"ollama": ollama_ttft, "openai": openai_ttft},
                    args.requests // 4,
                )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    lines = [
        f"Machine: {machine_line(engine)}. Tiny random-weight GGUF, one daemon on TCP, the two "
        "routes alternated request by request (`scripts/bench_ollama.py`). Load average at the "
        f"end: {os.getloadavg()[0]:.1f} (other work on the machine inflates both alike).",
        "",
        "| request | median ms | p90 ms | n |",
        "|---|---|---|---|",
        row("`POST /api/chat` stream false, 1 token", warm["ollama"]),
        row("`POST /engines/v1/chat/completions`, 1 token", warm["openai"]),
        row("`/api/chat` streamed: first content line", ttft["ollama"]),
        row("`/engines/v1/chat/completions` streamed: first content event", ttft["openai"]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        command = (
            "Command:\n\n```\n.venv/bin/python scripts/bench_ollama.py --requests 200 --write\n```"
        )
        write_section("Ollama API", f"{body.strip()}\n\n{command}")


if __name__ == "__main__":
    main()
