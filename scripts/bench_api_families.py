#!/usr/bin/env python3
"""What each API family costs on top of chat completions: the same warm tiny model through the
daemon's OpenAI chat route (the fast lane), Anthropic's Messages, OpenAI's Responses (translated
onto chat completions, stored on disk, or with ``store: false``) and Ollama's ``/api/chat``
(those go through aiohttp's lane and a relay).

Warm non-streamed requests (1 output token) and the time to the first streamed text, requests
interleaved across families in a fresh seeded random order each round; medians and p90; and the
daemon's CPU per request (its process's scheduler time around each request, not the runner's).
``--before TREE`` runs a second daemon from another checkout (a before/after comparison of a
change, side by side in one run, requests interleaved across both).  ``--write`` updates the
"## API families" section of docs/benchmarks.md (or, with ``--before``, "## API families,
before and after").

    .venv/bin/python scripts/bench_api_families.py --requests 100 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from scripts.bench_proxy import MODEL, cpu_s, daemon  # noqa: E402
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
    stream_body: dict[str, Any]  # the streamed request (8 tokens)


@dataclass
class Cell:
    """One family on one daemon."""

    warm_s: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)
    warm_cpu_s: list[float] = field(default_factory=list)
    first_cpu_s: list[float] = field(default_factory=list)


FAMILIES = [
    Family(
        "chat completions",
        "/v1/chat/completions",
        {"model": MODEL, "messages": HELLO, "max_tokens": 1},
        b'"content":"',
        {"model": MODEL, "messages": HELLO, "max_tokens": 8, "stream": True},
    ),
    Family(
        "anthropic messages",
        "/v1/messages",
        {"model": MODEL, "messages": HELLO, "max_tokens": 1},
        b"text_delta",
        {"model": MODEL, "messages": HELLO, "max_tokens": 8, "stream": True},
    ),
    Family(
        "responses (stored)",
        "/v1/responses",
        {"model": MODEL, "input": "hello", "max_output_tokens": 1},
        b"output_text.delta",
        {"model": MODEL, "input": "hello", "max_output_tokens": 8, "stream": True},
    ),
    Family(
        "responses (store: false)",
        "/v1/responses",
        {"model": MODEL, "input": "hello", "max_output_tokens": 1, "store": False},
        b"output_text.delta",
        {"model": MODEL, "input": "hello", "max_output_tokens": 8, "store": False, "stream": True},
    ),
    Family(
        "ollama chat",
        "/api/chat",
        {"model": MODEL, "messages": HELLO, "stream": False, "options": {"num_predict": 1}},
        b'"content"',
        {"model": MODEL, "messages": HELLO, "options": {"num_predict": 8}},
    ),
]


@dataclass
class Target:
    name: str
    base: str
    pid: int
    cells: dict[str, Cell] = field(default_factory=dict)

    def cell(self, f: Family) -> Cell:
        return self.cells.setdefault(f.name, Cell())


async def warm_one(session: aiohttp.ClientSession, t: Target, f: Family) -> None:
    cpu0, started = cpu_s(t.pid), time.perf_counter()
    async with session.post(t.base + f.path, json=f.body) as r:
        await r.read()
        assert r.status == 200, r.status
    cell = t.cell(f)
    cell.warm_s.append(time.perf_counter() - started)
    cell.warm_cpu_s.append(cpu_s(t.pid) - cpu0)


async def first_one(session: aiohttp.ClientSession, t: Target, f: Family) -> None:
    cpu0, started = cpu_s(t.pid), time.perf_counter()
    cell = t.cell(f)
    async with session.post(t.base + f.path, json=f.stream_body) as r:
        seen = b""
        async for chunk in r.content.iter_any():
            seen += chunk
            if f.first_text in seen:
                cell.first_s.append(time.perf_counter() - started)
                break
        async for _ in r.content.iter_any():
            pass
    cell.first_cpu_s.append(cpu_s(t.pid) - cpu0)


def ms(values: list[float], q: float = 0.5) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")  # nothing measured (the first text never seen)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(args: argparse.Namespace, targets: list[Target]) -> str:
    both = len(targets) > 1
    lines = [
        "The same warm tiny model (0.5 MB) through each API family on the daemon (TCP)"
        + (
            f", two daemons side by side in one run: {targets[0].name} and {targets[1].name}"
            if both
            else ""
        )
        + f".  Warm: non-streamed, 1 output token, {args.requests} requests per family per"
        f" round; first text: streamed (8 tokens), {args.requests // 4} per family per round;"
        " requests interleaved across families"
        + (" and daemons" if both else "")
        + f" in a fresh seeded random order; {args.rounds} rounds; medians.  CPU: the daemon"
        " process's scheduler time around each request (µs, median; not the runner's).",
        "",
        "| family | daemon | warm median (ms) | warm p90 (ms) | adds vs chat (ms) |"
        " first text (ms) | CPU / warm request (µs) | CPU / 8-token stream (µs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in FAMILIES:
        for t in targets:
            c, chat = t.cell(f), t.cell(FAMILIES[0])
            lines.append(
                f"| {f.name} | {t.name} | {ms(c.warm_s):.2f} | {ms(c.warm_s, 0.9):.2f} | "
                f"{ms(c.warm_s) - ms(chat.warm_s):+.2f} | {ms(c.first_s):.2f} | "
                f"{ms(c.warm_cpu_s) * 1000:.0f} | {ms(c.first_cpu_s) * 1000:.0f} |"
            )
    lines += [
        "",
        "- Chat completions is served by the fast lane; the other families by aiohttp's lane"
        " and their relays.  Responses (stored) writes each answer to `<home>/responses/`"
        " (write, fsync, rename, in a thread) before answering; `store: false` shows the"
        " translation alone.",
        f"- Machine: {args.machine}; client, daemon and llama-server share the cores (see the"
        " p90s).",
        "",
        "Command: `.venv/bin/python scripts/bench_api_families.py"
        f" --requests {args.requests} --rounds {args.rounds}"
        + (f" --before {args.before}" if args.before else "")
        + " --write`",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    engine = await locate(None)
    args.machine = machine_line(engine)
    home = Path(tempfile.mkdtemp(prefix="mr-bench-", dir="/tmp"))
    try:
        gguf = build_tiny_gguf(home / "tiny.gguf")
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            trees = [("after", None), ("before", args.before)] if args.before else [("", None)]
            targets = []
            for name, tree in trees:
                _sock, port, pid = await stack.enter_async_context(
                    daemon(home / (name or "d"), gguf, engine.path, tree=tree)
                )
                targets.append(Target(name or "this tree", f"http://127.0.0.1:{port}", pid))
            targets.reverse()  # before first in the tables
            for t in targets:
                for f in FAMILIES:  # load the model, warm connections and caches
                    for _ in range(3):
                        await warm_one(session, t, f)
                t.cells.clear()
            rng = random.Random(7)  # noqa: S311 - a reproducible order, not a secret
            for i in range(args.rounds):
                for step, count in ((warm_one, args.requests), (first_one, args.requests // 4)):
                    order = [(t, f) for t in targets for f in FAMILIES for _ in range(count)]
                    rng.shuffle(order)
                    for t, f in order:
                        await step(session, t, f)
                print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
        return report(args, targets)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another checkout's daemon, side by side")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        write_section("API families, before and after" if args.before else "API families", body)


if __name__ == "__main__":
    main()
