#!/usr/bin/env python3
"""The daemon's proxy overhead: the same tiny model through the daemon vs straight to llama-server,
and vs llama.cpp's own router mode (``llama-server --models-dir DIR --models-max N``) as the peer.

In one run, on one machine:
- direct: the daemon's own runner process, reached on its Unix socket (same process, same argv:
  the only difference is the daemon in between);
- daemon (unix): the daemon on its Unix socket; daemon (tcp): on 127.0.0.1;
- router (tcp): ``llama-server --models-dir DIR --models-max 1`` on 127.0.0.1, warm.
Measured: warm non-streamed chat requests (``max_tokens`` 1), time to first streamed token, and
total tokens/s of 16 concurrent streams (``max_tokens`` 64, ``ignore_eos``).  Targets are rounds
alternated between targets; medians.  ``--write`` updates the "## Proxy" section of
docs/benchmarks.md.

    .venv/bin/python scripts/bench_proxy.py --requests 1000 --rounds 5 --streams 200 --write

The same on a real model's stream (Gemma 3 270M, one token per read: per-token CPU against a
bare relay, router mode, 256-token walls, delivery lag) is its "real" section:

    .venv/bin/python scripts/bench_proxy.py --real --rounds 3 --write   (bench_real_stream.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.config import Config  # noqa: E402
from modelrunner.distribution.store import Store  # noqa: E402
from modelrunner.runners.locate import locate  # noqa: E402
from scripts.benchdoc import write_section  # noqa: E402
from scripts.machine import machine_line  # noqa: E402
from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402

MODEL = "bench/tiny"
MESSAGES = [{"role": "user", "content": "Say hello."}]
CONCURRENCY = 16
STREAM_REPEATS = 16  # concurrent runs per target per round (the noisiest figure)
STREAM_TOKENS = 64


@dataclass
class Target:
    name: str
    base: str
    model: str
    connector: Callable[[], aiohttp.BaseConnector]
    warm_s: list[float] = field(default_factory=list)
    round_warm_ms: list[float] = field(default_factory=list)  # each round's median
    round_tps: list[float] = field(default_factory=list)  # each round's median
    ttft_s: list[float] = field(default_factory=list)
    tps: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_http(
    connector: Callable[[], aiohttp.BaseConnector], url: str, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with aiohttp.ClientSession(connector=connector()) as s, s.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def daemon(
    home: Path,
    gguf: Path,
    binary: Path,
    server: dict[str, Any] | None = None,
    runners: dict[str, Any] | None = None,
    tree: Path | None = None,
) -> AsyncIterator[tuple[Path, int, int]]:
    """The real daemon on a temp home with the model packaged; (socket, port, pid).
    *server*, *runners*: extra keys of those sections (bench_request_log turns the log off).
    *tree*: run the daemon of another checkout of the project (a before/after comparison)."""
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    sock = home / "run" / "model-runner.sock"
    port = free_port()
    cfg = {
        "server": {"socket": str(sock), "port": port, **(server or {})},
        "runners": {
            "llama_server_path": str(binary),
            "max_in_flight": CONCURRENCY,  # the default (4) would answer 429 to 12 of the 16
            "idle_ttl_s": 3600,
            **(runners or {}),
        },
    }
    (home / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "MODEL_RUNNER_HOME": str(home)}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    config = Config.load(home / "config.yaml", env=env)
    async with Store(config.store) as store:
        await store.package(gguf, MODEL)
    log = open(home / "daemon.stderr", "wb")  # noqa: ASYNC230, SIM115
    proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark's setup, before anything is timed
        [sys.executable, "-m", "modelrunner", "--config", str(home / "config.yaml"), "serve"],
        env=env,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        cwd=tree,
    )
    try:
        await wait_http(lambda: aiohttp.UnixConnector(path=str(sock)), "http://localhost/")
        yield sock, port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        log.close()


@contextlib.asynccontextmanager
async def router(models_dir: Path, binary: Path) -> AsyncIterator[tuple[int, int]]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        "--models-dir",
        str(models_dir),
        "--models-max",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await wait_http(aiohttp.TCPConnector, f"http://127.0.0.1:{port}/health")
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()


async def runner_socket(sock: Path) -> Path:
    """The daemon's runner for the model, reached directly (its --host from its argv)."""
    import psutil

    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s,
        s.get("http://localhost/engines/ps") as r,
    ):
        (row,) = await r.json()
    argv = psutil.Process(row["pid"]).cmdline()
    return Path(argv[argv.index("--host") + 1])


async def chat(session: aiohttp.ClientSession, t: Target, **extra: Any) -> aiohttp.ClientResponse:
    body = {"model": t.model, "messages": MESSAGES, **extra}
    # llama-server closes a connection after a stream while announcing keep-alive: streamed
    # requests use a connection of their own, for every target alike.
    headers = {"Connection": "close"} if extra.get("stream") else {}
    return await session.post(f"{t.base}/v1/chat/completions", json=body, headers=headers)


async def warm_one(session: aiohttp.ClientSession, t: Target) -> None:
    t0 = time.perf_counter()
    async with await chat(session, t, max_tokens=1) as r:
        await r.read()
        assert r.status == 200, r.status
    t.warm_s.append(time.perf_counter() - t0)


async def ttft_one(session: aiohttp.ClientSession, t: Target) -> None:
    t0 = time.perf_counter()
    async with await chat(session, t, max_tokens=8, stream=True) as r:
        async for line in r.content:
            if line.startswith(b"data: ") and b'"content"' in line:
                t.ttft_s.append(time.perf_counter() - t0)
                break
        await r.read()


async def interleaved(
    sessions: dict[str, aiohttp.ClientSession],
    targets: dict[str, Target],
    one: Callable[[aiohttp.ClientSession, Target], Any],
    n: int,
    rotate: int,
) -> None:
    """Request by request, targets in a random order each time: load on this shared machine,
    and each process's work after its answer, fall on every target alike."""
    # A fresh random order for every request of every target (seeded: repeatable).  A fixed
    # order made one target always follow router mode, whose process is still busy for a few ms
    # after its answer, and that target paid for it: "direct" came out slower than the daemon.
    rng = random.Random(rotate)  # noqa: S311 (an order, not a secret)
    order = list(targets)
    for _ in range(n):
        rng.shuffle(order)
        for key in order:
            await one(sessions[key], targets[key])


async def concurrent(session: aiohttp.ClientSession, t: Target) -> None:
    async def one() -> int:
        tokens = 0
        async with await chat(
            session, t, max_tokens=STREAM_TOKENS, stream=True, ignore_eos=True
        ) as r:
            assert r.status == 200, await r.text()
            async for line in r.content:
                if line.startswith(b"data: ") and b'"content"' in line:
                    tokens += 1
        return tokens

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    t.tps.append(sum(counts) / (time.perf_counter() - t0))


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] * 1000


def med(values: list[float]) -> float:
    return statistics.median(values)


def span(values: list[float], fmt: str = ".2f") -> str:
    return f"{min(values):{fmt}} to {max(values):{fmt}}"


def adds(row: list[float], base: list[float]) -> list[float]:
    return [a - b for a, b in zip(row, base, strict=True)]


def ratios(row: list[float], base: list[float]) -> list[float]:
    """Round by round (or run by run): targets measured together share the machine's load."""
    return [a / b for a, b in zip(row, base, strict=True)]


def round_medians(values: list[float], rounds: int) -> list[float]:
    """Per-run figures (``STREAM_REPEATS`` a round, in order) as each round's median."""
    size = len(values) // rounds
    return [statistics.median(values[i * size : (i + 1) * size]) for i in range(rounds)]


def report(rows: dict[str, Row], args: argparse.Namespace) -> str:
    direct, unix, tcp, rt = rows["direct"], rows["daemon-unix"], rows["daemon-tcp"], rows["router"]
    sane = med(direct.warm_ms) <= med(unix.warm_ms) and med(direct.warm_ms) <= med(tcp.warm_ms)
    table = [
        "| target | warm (ms) | adds vs direct (ms) | 256 KB body (ms) | one 64-token stream (ms) "
        "| 16 streams (tok/s) | vs direct | proxy CPU / request (ms) | / 256 KB request (ms) "
        "| / streamed token (µs) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        cpu = (
            "—|—|—"
            if r.pid is None
            else f"{med(r.cpu_req_ms):.3f} ({span(r.cpu_req_ms, '.3f')}) | "
            f"{med(r.cpu_big_ms):.2f} ({span(r.cpu_big_ms)}) | "
            f"{med(r.cpu_tok_us):.1f} ({span(r.cpu_tok_us, '.1f')})"
        )
        added = adds(r.warm_ms, direct.warm_ms)
        table.append(
            f"| {r.name} | {med(r.warm_ms):.2f} | {med(added):+.2f} ({span(added)}) | "
            f"{med(r.big_ms):.2f} | {med(r.stream_ms):.1f} | {med(r.tps):.0f} | "
            f"{med(ratios(r.tps_runs, direct.tps_runs)):.3f} | {cpu} |"
        )
    # The CPU checks take the median of each round's ratio.
    half_req = med(ratios(tcp.cpu_req_ms, rt.cpu_req_ms))
    half_tok = med(ratios(tcp.cpu_tok_us, rt.cpu_tok_us))
    # 16 streams: each run's ratio to direct's run of the same repeat (seconds apart, the
    # targets in a fresh order each repeat), the median over every run of the rounds.
    run_ratios = ratios(tcp.tps_runs, direct.tps_runs)
    streams = med(run_ratios)
    stream_ratios = round_medians(run_ratios, len(tcp.tps))
    checks = [
        ("sanity: direct no slower than the daemon (else no figure here is believed)", sane),
        ("daemon CPU per request <= 0.5 ms (tcp)", med(tcp.cpu_req_ms) <= 0.5),
        ("daemon CPU per streamed token <= 35 µs (tcp)", med(tcp.cpu_tok_us) <= 35),
        (
            "daemon CPU per request and per token at most half of router mode's (each round's "
            f"ratio, median: {half_req:.2f} per request, {half_tok:.2f} per token)",
            half_req <= 0.5 and half_tok <= 0.5,
        ),
        (
            "wall added <= 0.5 ms at the median (tcp, vs the runner's socket)",
            med(adds(tcp.warm_ms, direct.warm_ms)) <= 0.5,
        ),
        (
            f"{CONCURRENCY} streams >= 0.97 of direct tok/s (tcp; each run's ratio to direct's "
            f"of the same repeat, median of {len(run_ratios)}: {streams:.3f}, rounds' medians "
            f"{span(stream_ratios, '.3f')})",
            streams >= 0.97,
        ),
    ]
    lines = [
        INTRO.format(
            requests=args.requests,
            rounds=args.rounds,
            streams=args.streams,
            blocks=args.blocks,
            repeats=STREAM_REPEATS,
        ),
        "",
        *table,
        "",
        *(f"- {'met' if ok else 'NOT met'}: {what}" for what, ok in checks),
        f"- Machine: {args.machine}; clients, daemon and llama-server share the cores.",
        "",
        "Command:",
        "",
        "```",
        f".venv/bin/python scripts/bench_proxy.py --requests {args.requests} "
        f"--rounds {args.rounds} --streams {args.streams} --blocks {args.blocks} --write",
        "```",
    ]
    return "\n".join(lines)


INTRO = """\
The daemon's proxy on a warm model (tiny llama, 0.5 MB) vs the same llama-server process reached
directly on its Unix socket, and vs llama.cpp's router mode (`llama-server --models-dir DIR
--models-max 1`, warm) as the peer, side by side in one run of {rounds} rounds; "fast lane off" is
a second daemon with `server.fast_lane: false` (every request through aiohttp, as before the fast
lane), "conversation store off" a third with `runners.kv_cache.conversations: 0` (what issue 35's
per-conversation KV store costs a request), each with a runner of its own on the same model. The
clients run in processes of their own (`scripts/bench_client.py`, http.client, one kept-alive
connection per target). Warm: non-streamed chat, `max_tokens` 1, {requests} per target per round,
interleaved request by request across targets in a fresh seeded random order; 256 KB body: the same
with a long conversation, a tenth as many. Proxy CPU: the kernel's accounting of the proxy's
process (the scheduler's `/proc/PID/task/*/schedstat`, user + system in ns; the daemon's, or
router mode's parent, not its child)
across each target's requests run alone, divided by their count, in {blocks} blocks per round
alternated between the targets in a fresh seeded order (the machine's drift falls on all alike);
per streamed token: across {streams} streams of 64 tokens (`ignore_eos`), divided by the tokens. 16
streams: 16 concurrent 64-token streams, {repeats} times per target per round, the targets in a
fresh seeded order each time; its "vs direct" is the median of every run's ratio to direct's run of
the same repeat. Other figures are the median of the rounds' medians, (the rounds' spread) in
brackets."""


CLIENT = ROOT / "scripts" / "bench_client.py"
NO_CONVERSATIONS = {"kv_cache": {"conversations": 0}}
BIG_BODY = 256 * 1024


async def client(job: dict[str, Any]) -> dict[str, Any]:
    """One job in a client process of its own (scripts/bench_client.py)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        json.dumps(job),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench client failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def cpu_s(pid: int) -> float:
    """The CPU time of one process (user + system, all its threads, not its children): the
    scheduler's nanoseconds (``/proc/PID/task/*/schedstat``) where Linux has them, since the
    10 ms ticks of ``cpu_times`` are a tenth of a millisecond per request over 100 requests;
    psutil's ``cpu_times`` elsewhere."""
    tasks = Path(f"/proc/{pid}/task")
    if tasks.is_dir():
        total = 0
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


@dataclass
class Row:
    name: str
    spec: dict[str, Any]
    pid: int | None  # the proxy's process (None: direct, no proxy)
    warm_ms: list[float] = field(default_factory=list)  # each round's median
    big_ms: list[float] = field(default_factory=list)
    stream_ms: list[float] = field(default_factory=list)
    tps: list[float] = field(default_factory=list)  # each round's median
    tps_runs: list[float] = field(default_factory=list)  # every run, round after round
    cpu_req_ms: list[float] = field(default_factory=list)
    cpu_big_ms: list[float] = field(default_factory=list)
    cpu_tok_us: list[float] = field(default_factory=list)


async def measured(row: Row, job: dict[str, Any], key: str) -> tuple[list[Any], float]:
    """A job on one target alone, and the CPU its proxy spent meanwhile (s)."""
    before = cpu_s(row.pid) if row.pid else 0.0
    out = await client({**job, "targets": {key: row.spec}})
    spent = (cpu_s(row.pid) - before) if row.pid else 0.0
    values: list[Any] = out[key]
    return values, spent


async def one_round(rows: dict[str, Row], args: argparse.Namespace, i: int) -> None:
    specs = {k: r.spec for k, r in rows.items()}
    walls = await client({"mode": "warm", "n": args.requests, "seed": i, "targets": specs})
    for k, r in rows.items():
        r.warm_ms.append(ms(walls[k]))
    big = max(args.requests // 10, 5)
    walls = await client(
        {"mode": "warm", "n": big, "seed": i, "targets": specs, "body_pad": BIG_BODY}
    )
    for k, r in rows.items():
        r.big_ms.append(ms(walls[k]))
    # Each target's CPU jobs in blocks, the targets alternated block by block (a fresh seeded
    # order each block): the machine's drift over a round then falls on every target alike,
    # while each block of requests still runs on one target alone (warm caches, as in use).
    blocks = max(1, args.blocks)
    big_n = max(big // blocks, 1)
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("warm", {"mode": "warm", "n": max(args.requests // blocks, 1)}),
        ("big", {"mode": "warm", "n": big_n, "body_pad": BIG_BODY}),
        ("stream", {"mode": "stream", "n": max(args.streams // blocks, 1)}),
    ]
    spent: dict[tuple[str, str], float] = {}
    count: dict[tuple[str, str], int] = {}
    walls: dict[str, list[float]] = {k: [] for k in rows}
    rng = random.Random(i)  # noqa: S311 (an order, not a secret)
    order = list(rows)
    for _ in range(blocks):
        for kind, job in kinds:
            rng.shuffle(order)
            for k in order:
                values, cpu = await measured(rows[k], job, k)
                n = sum(tokens for _, tokens in values) if kind == "stream" else job["n"]
                spent[k, kind] = spent.get((k, kind), 0.0) + cpu
                count[k, kind] = count.get((k, kind), 0) + n
                if kind == "stream":
                    walls[k] += [w for w, _ in values]
    for k, r in rows.items():
        r.cpu_req_ms.append(spent[k, "warm"] / count[k, "warm"] * 1000)
        r.cpu_big_ms.append(spent[k, "big"] / count[k, "big"] * 1000)
        r.cpu_tok_us.append(spent[k, "stream"] / count[k, "stream"] * 1e6)
        r.stream_ms.append(ms(walls[k]))
    tps = await client({"mode": "concurrent", "n": STREAM_REPEATS, "seed": i, "targets": specs})
    for k, r in rows.items():
        r.tps.append(statistics.median(tps[k]))
        r.tps_runs += tps[k]


async def run(args: argparse.Namespace) -> str:
    engine = await locate(None)
    binary = engine.path
    args.machine = machine_line(engine)
    home = Path(tempfile.mkdtemp(prefix="mr-bench-", dir="/tmp"))
    try:
        models = home / "router-models"
        models.mkdir()
        gguf = build_tiny_gguf(models / "tiny.gguf")
        async with (
            daemon(home / "d", gguf, binary) as (sock, port, dpid),
            daemon(home / "a", gguf, binary, {"fast_lane": False}) as (asock, aport, apid),
            daemon(home / "k", gguf, binary, runners=NO_CONVERSATIONS) as (ksock, kport, kpid),
            router(models, binary) as (rport, rpid),
        ):
            # Load the model in both daemons (and find the first one's runner) before anything
            # is timed.
            for where in (sock, asock, ksock):
                async with (
                    aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(where))) as s,
                    s.post(
                        "http://localhost/engines/v1/chat/completions",
                        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1},
                    ) as r,
                ):
                    assert r.status == 200, await r.text()
            direct_sock = await runner_socket(sock)
            rows = {
                "direct": Row(
                    "direct (runner socket)",
                    {"unix": str(direct_sock), "prefix": "", "model": "x"},
                    None,
                ),
                "daemon-unix": Row(
                    "daemon (unix socket)",
                    {"unix": str(sock), "prefix": "/engines", "model": MODEL},
                    dpid,
                ),
                "daemon-tcp": Row(
                    "daemon (tcp)",
                    {"tcp": ["127.0.0.1", port], "prefix": "/engines", "model": MODEL},
                    dpid,
                ),
                "daemon-aiohttp": Row(
                    "daemon (tcp), fast lane off",
                    {"tcp": ["127.0.0.1", aport], "prefix": "/engines", "model": MODEL},
                    apid,
                ),
                "daemon-kvoff": Row(
                    "daemon (tcp), conversation store off",
                    {"tcp": ["127.0.0.1", kport], "prefix": "/engines", "model": MODEL},
                    kpid,
                ),
                "router": Row(
                    "router mode (tcp)",
                    {"tcp": ["127.0.0.1", rport], "prefix": "", "model": "tiny"},
                    rpid,
                ),
            }
            # Warm-up: connections, caches, the router's child, the big body's prompt cache.
            specs = {k: r.spec for k, r in rows.items()}
            await client({"mode": "warm", "n": 5, "targets": specs})
            await client({"mode": "warm", "n": 2, "targets": specs, "body_pad": BIG_BODY})
            for i in range(args.rounds):
                await one_round(rows, args, i)
                print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
        return report(rows, args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def stop_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI's cancel) unwinds like Ctrl-C, so that every daemon, runner and
    router this benchmark started is stopped by its context manager, not left running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def cli(
    run: Callable[[argparse.Namespace], Awaitable[str]],
    doc: str,
    *,
    rounds: int,
    title: str,
) -> None:
    """The flags of this benchmark and of its siblings (bench_request_log): run, print, --write."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--streams", type=int, default=20, help="64-token streams per round")
    parser.add_argument(
        "--blocks", type=int, default=5, help="CPU jobs per target per round, alternated"
    )
    run_and_write(parser, run, title)


def run_and_write(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Awaitable[str]],
    title: str,
) -> None:
    """Parse *parser*'s flags (plus --write), run, print the section, and with --write put it in
    docs/benchmarks.md under *title*; SIGTERM stops it cleanly."""
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    stop_on_sigterm()
    body = asyncio.run(run(args))
    print(body)
    if args.write:
        write_section(title, body)


def main() -> None:
    if "--real" in sys.argv:  # the real-model section (its own flags: --rounds, --pairs, --write)
        sys.argv.remove("--real")
        from scripts import bench_real_stream

        bench_real_stream.main()
        return
    cli(run, __doc__ or "", rounds=5, title="Proxy")


if __name__ == "__main__":
    main()
