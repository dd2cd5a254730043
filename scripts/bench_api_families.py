#!/usr/bin/env python3
"""What each API family costs on top of chat completions: the same warm tiny model through the
daemon's OpenAI chat route, Anthropic's Messages (passed through) and OpenAI's Responses
(translated onto chat completions, stored on disk, or with ``store: false``).

Warm non-streamed requests (1 output token) and the time to the first streamed text, requests
interleaved across families in a fresh seeded random order each round; medians and p90.
``--write`` updates the "## API families" section of docs/benchmarks.md.

    .venv/bin/python scripts/bench_api_families.py --requests 100 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.runners.locate import locate  # noqa: E402
from scripts.bench_proxy import MODEL, daemon  # noqa: E402
from scripts.benchdoc import write_section  # noqa: E402
from scripts.machine import machine_line  # noqa: E402
from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402

HELLO = [{"role": "user", "content": "hello"}]


@dataclass
class Family:
    name: str
    path: str
    body: dict[str, Any]
    first_text: bytes  # what the first streamed text looks like on the wire
    warm_s: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)


FAMILIES = [
    Family(
        "chat completions",
        "/v1/chat/completions",
        {"model": MODEL, "messages": HELLO, "max_tokens": 1},
        b'"content":"',
    ),
    Family(
        "anthropic messages",
        "/v1/messages",
        {"model": MODEL, "messages": HELLO, "max_tokens": 1},
        b"text_delta",
    ),
    Family(
        "responses (stored)",
        "/v1/responses",
        {"model": MODEL, "input": "hello", "max_output_tokens": 1},
        b"output_text.delta",
    ),
    Family(
        "responses (store: false)",
        "/v1/responses",
        {"model": MODEL, "input": "hello", "max_output_tokens": 1, "store": False},
        b"output_text.delta",
    ),
]


async def warm_one(session: aiohttp.ClientSession, base: str, f: Family) -> None:
    started = time.perf_counter()
    async with session.post(base + f.path, json=f.body) as r:
        await r.read()
        assert r.status == 200, r.status
    f.warm_s.append(time.perf_counter() - started)


async def first_one(session: aiohttp.ClientSession, base: str, f: Family) -> None:
    started = time.perf_counter()
    body = dict(f.body, stream=True)
    for key in ("max_tokens", "max_output_tokens"):
        if key in body:
            body[key] = 8
    async with session.post(base + f.path, json=body) as r:
        seen = b""
        async for chunk in r.content.iter_any():
            seen += chunk
            if f.first_text in seen:
                f.first_s.append(time.perf_counter() - started)
                break
        async for _ in r.content.iter_any():
            pass


def ms(values: list[float], q: float = 0.5) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(args: argparse.Namespace) -> str:
    base = FAMILIES[0]
    lines = [
        f"The same warm tiny model (0.5 MB) through each API family on the daemon (TCP).  Warm:"
        f" non-streamed, 1 output token, {args.requests} requests per family per round; first"
        f" text: streamed, {args.requests // 4} per family per round; requests interleaved"
        f" across families in a fresh seeded random order; {args.rounds} rounds; medians.",
        "",
        "| family | warm median (ms) | warm p90 (ms) | adds vs chat (ms) | first text (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for f in FAMILIES:
        lines.append(
            f"| {f.name} | {ms(f.warm_s):.2f} | {ms(f.warm_s, 0.9):.2f} | "
            f"{ms(f.warm_s) - ms(base.warm_s):+.2f} | {ms(f.first_s):.2f} |"
        )
    lines += [
        "",
        "- Responses (stored) writes each answer to `<home>/responses/` (write, fsync, rename, in"
        " a thread) before answering; `store: false` shows the translation alone.",
        f"- Machine: {args.machine}; client, daemon and llama-server share the cores (and, in"
        " this run, the machine with other test runs: see the p90s).",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    engine = await locate(None)
    args.machine = machine_line(engine)
    home = Path(tempfile.mkdtemp(prefix="mr-bench-", dir="/tmp"))
    try:
        gguf = build_tiny_gguf(home / "tiny.gguf")
        async with (
            daemon(home / "d", gguf, engine.path) as (_sock, port, _pid),
            aiohttp.ClientSession() as session,
        ):
            base = f"http://127.0.0.1:{port}"
            for f in FAMILIES:  # load the model, warm connections and caches
                for _ in range(3):
                    await warm_one(session, base, f)
                f.warm_s.clear()
            rng = random.Random(7)  # noqa: S311 - a reproducible order, not a secret
            for i in range(args.rounds):
                for step, count in ((warm_one, args.requests), (first_one, args.requests // 4)):
                    order = [f for f in FAMILIES for _ in range(count)]
                    rng.shuffle(order)
                    for f in order:
                        await step(session, base, f)
                print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
        assert all(f.warm_s and f.first_s for f in FAMILIES)
        return report(args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        write_section("API families", body)


if __name__ == "__main__":
    main()
