#!/usr/bin/env python3
"""What the request log costs the relay: three daemons on the same tiny model, two with
``server.request_log: true`` (the default; the second one, "on (A/A)", shows how far two
identical daemons differ here) and one with it off, measured alternately.

Measured as bench_proxy measures the proxy (its helpers): warm non-streamed chat requests
(``max_tokens`` 1), time to first streamed token, and tokens/s of 16 concurrent streams
(``max_tokens`` 64, ``ignore_eos``); medians over rounds.  ``--write`` updates the
"## Request log" section of docs/benchmarks.md.

    .venv/bin/python scripts/bench_request_log.py --requests 200 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.runners.locate import locate  # noqa: E402
from modelrunner.server.request_log import RequestLog  # noqa: E402
from scripts.bench_proxy import (  # noqa: E402
    MODEL,
    STREAM_REPEATS,
    Target,
    chat,
    concurrent,
    daemon,
    interleaved,
    ms,
    p90,
    ttft_one,
    warm_one,
    write_section,
)
from scripts.machine import machine_line  # noqa: E402
from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402


def report(targets: dict[str, Target], args: argparse.Namespace) -> str:
    off = targets["off"]
    rows = [
        "| request log | warm median (ms) | warm p90 (ms) | first token (ms) "
        "| 16 streams (tok/s) | vs off |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in targets.values():
        tps, base = statistics.median(t.tps), statistics.median(off.tps)
        rows.append(
            f"| {t.name} | {ms(t.warm_s):.2f} | {p90(t.warm_s):.2f} | {ms(t.ttft_s):.2f} | "
            f"{tps:.1f} | {tps / base:.2f} |"
        )

    def spread(key: str) -> str:
        ratios = [a / b for a, b in zip(targets[key].round_tps, off.round_tps, strict=True)]
        return f"{min(ratios):.2f} to {max(ratios):.2f}"

    return (
        f"{tap_cost()}\n\n"
        f"{args.machine}; `scripts/bench_request_log.py --requests {args.requests} "
        f"--rounds {args.rounds}`: two daemons, the same tiny model, targets alternated "
        "request by request.\n\n" + "\n".join(rows) + "\n\n"
        f"Each round's ratio to off of the 16-stream figure: on {spread('on')}, on (A/A) "
        f"{spread('aa')}. Where on and on (A/A) differ as much as on and off, the difference "
        "is this machine's noise, not the log; the per-chunk figure above is its real cost.\n"
    )


def tap_cost() -> str:
    """The relay's only added work per chunk, timed alone: ``Record.tap`` of a 150-byte chunk."""
    chunk = (
        b'data: {"choices":[{"delta":{"content":" word"}}],"object":"chat.completion.chunk"}\n\n'
    )
    best = float("inf")
    for _ in range(5):
        record = RequestLog().begin(
            model_id="m", model="m", method="POST", url="/", user_agent="", body=b"{}"
        )
        t0 = time.perf_counter()
        for _ in range(10_000):
            record.tap(chunk)
        best = min(best, (time.perf_counter() - t0) / 10_000)
    return (
        f"`Record.tap` (the one call the relay makes per streamed chunk): {best * 1e6:.2f} µs "
        f"per chunk (best of 5 x 10,000, past the 256 KiB bound included)."
    )


async def run(args: argparse.Namespace) -> str:
    engine = await locate(None)
    args.machine = machine_line(engine)
    home = Path(tempfile.mkdtemp(prefix="mr-bench-", dir="/tmp"))
    try:
        gguf = build_tiny_gguf(home / "tiny.gguf")
        async with (
            daemon(home / "on", gguf, engine.path) as (sock_on, _p1, _pid1),
            daemon(home / "aa", gguf, engine.path) as (sock_aa, _p2, _pid2),
            daemon(home / "off", gguf, engine.path, {"request_log": False}) as (sock_off, _, _),
        ):
            targets = {
                "on": Target(
                    "on",
                    "http://localhost/engines",
                    MODEL,
                    lambda: aiohttp.UnixConnector(path=str(sock_on)),
                ),
                "aa": Target(
                    "on (A/A)",
                    "http://localhost/engines",
                    MODEL,
                    lambda: aiohttp.UnixConnector(path=str(sock_aa)),
                ),
                "off": Target(
                    "off",
                    "http://localhost/engines",
                    MODEL,
                    lambda: aiohttp.UnixConnector(path=str(sock_off)),
                ),
            }
            sessions = {
                k: aiohttp.ClientSession(connector=t.connector()) for k, t in targets.items()
            }
            try:
                for key, t in targets.items():
                    async with await chat(sessions[key], t, max_tokens=1) as r:
                        assert r.status == 200, await r.text()
                await interleaved(sessions, targets, warm_one, 5, 0)
                for t in targets.values():
                    t.warm_s.clear()
                for i in range(args.rounds):
                    await interleaved(sessions, targets, warm_one, args.requests, i)
                    await interleaved(sessions, targets, ttft_one, 20, i)
                    marks = {k: len(t.tps) for k, t in targets.items()}
                    keys = list(targets)
                    for r in range(2 * STREAM_REPEATS):  # the order rotated run by run
                        shift = (i + r) % len(keys)
                        for key in keys[shift:] + keys[:shift]:
                            await concurrent(sessions[key], targets[key])
                    for k, t in targets.items():
                        t.round_tps.append(statistics.median(t.tps[marks[k] :]))
                    print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
            finally:
                for s in sessions.values():
                    await s.close()
        return report(targets, args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        write_section(body, "Request log")


if __name__ == "__main__":
    main()
