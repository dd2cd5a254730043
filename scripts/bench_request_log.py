#!/usr/bin/env python3
"""What the request log costs the relay.

Three figures: ``Record.tap`` (the one call the relay adds per chunk) timed alone; the relay
alone in one process (a fake runner, ``serve()`` with the log on and off, the client); and
three daemons on the same tiny model, two with ``server.request_log: true`` (the default; the
second one, "on (A/A)", shows how far two identical daemons differ here) and one with it off.

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
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.runners.locate import locate  # noqa: E402
from modelrunner.server.observe.request_log import RequestLog  # noqa: E402
from scripts.bench_proxy import (  # noqa: E402
    MODEL,
    STREAM_REPEATS,
    Target,
    chat,
    cli,
    concurrent,
    daemon,
    interleaved,
    ms,
    p90,
    ttft_one,
    warm_one,
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
        f"{tap_cost()}\n\n{args.relay}\n\n"
        f"{args.machine}; `scripts/bench_request_log.py --requests {args.requests} "
        f"--rounds {args.rounds}`: three daemons, the same tiny model, targets alternated "
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


CHUNK = b'data: {"choices":[{"delta":{"content":" word"}}],"object":"chat.completion.chunk"}\n\n'


async def relay_cost(rounds: int = 40, streams: int = 16, chunks: int = 64) -> str:
    """The relay alone, in one process: a fake runner sending *chunks* SSE events, serve() with
    the log on and off (alternated), 16 concurrent streams; µs of daemon work per chunk."""
    import contextlib
    from types import SimpleNamespace

    from aiohttp import web

    from modelrunner.config import Config
    from modelrunner.server.api.openai_api import serve
    from modelrunner.server.observe.events import EventBus
    from modelrunner.server.observe.metrics import Metrics
    from modelrunner.server.relay.proxy import UpstreamPool

    async def fake_runner(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(chunks):
            await resp.write(CHUNK)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    tmp = Path(tempfile.mkdtemp(prefix="mr-relay-", dir="/tmp"))
    up = web.AppRunner(web.Application(), handler_cancellation=True)
    up.app.router.add_post("/v1/chat/completions", fake_runner)
    await up.setup()
    await web.UnixSite(up, str(tmp / "up.sock")).start()

    @contextlib.asynccontextmanager
    async def acquire(*_: Any) -> Any:
        yield SimpleNamespace(socket_path=tmp / "up.sock")

    pool = UpstreamPool(connect_timeout_s=5, read_timeout_s=30)
    apps, seconds = {}, {"on": [], "off": []}  # type: ignore[var-annotated]
    for key, on in (("on", True), ("off", False)):
        state = SimpleNamespace(
            supervisor=SimpleNamespace(acquire=acquire),
            upstream=pool,
            metrics=Metrics(),
            config=Config.from_mapping({"server": {"request_log": on}}),
            settings=SimpleNamespace(get=lambda _m: None),
            events=EventBus(),
            requests=RequestLog(),
        )

        async def handler(request: web.Request, state: Any = state) -> web.StreamResponse:
            body = await request.read()
            path = "/v1/chat/completions"
            return await serve(
                state, request, "m", "m", "completion", path, body, None, stream=True
            )

        app = web.AppRunner(web.Application(), handler_cancellation=True)
        app.app.router.add_post("/v1/chat/completions", handler)
        await app.setup()
        await web.UnixSite(app, str(tmp / f"{key}.sock")).start()
        apps[key] = app

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.post("http://x/v1/chat/completions", data=b'{"model":"m"}') as r:
            await r.read()

    try:
        for i in range(rounds):
            for key in ("on", "off") if i % 2 else ("off", "on"):
                connector = aiohttp.UnixConnector(path=str(tmp / f"{key}.sock"))
                async with aiohttp.ClientSession(connector=connector) as session:
                    t0 = time.perf_counter()
                    await asyncio.gather(*(one(session) for _ in range(streams)))
                    seconds[key].append(time.perf_counter() - t0)
    finally:
        await pool.close()
        for runner in (*apps.values(), up):
            await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    per = {k: statistics.median(v) / (streams * chunks) * 1e6 for k, v in seconds.items()}
    return (
        f"The relay alone (one process: a fake runner, serve(), the client; {streams} streams of "
        f"{chunks} chunks, {rounds} rounds alternated, medians): {per['on']:.1f} µs per chunk "
        f"with the log on, {per['off']:.1f} µs off, all three parts included."
    )


async def run(args: argparse.Namespace) -> str:
    engine = await locate(None)
    args.machine = machine_line(engine)
    args.relay = await relay_cost()
    print(args.relay, file=sys.stderr)
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
    cli(run, __doc__ or "", rounds=3, title="Request log")


if __name__ == "__main__":
    main()
