#!/usr/bin/env python3
"""Dashboard: first paint and time to the first state drawn, in Debian's headless Chromium.

The real daemon (a temp home, the tiny model in its store), Playwright driving
``/usr/bin/chromium``.  Two cases, ``--runs`` loads each: *cold*, a new browser context per load
(empty cache, as a first visit), and *warm*, reloads in one context (files revalidated by ETag).
From the performance API: first contentful paint, the page's own answer (request start to
response end) and the first state drawn (models and runners listed).  The load average is
written beside the numbers: on a shared machine it explains most of the spread.  ``--write``
updates the "## Dashboard" section of docs/benchmarks.md.

    .venv/bin/python scripts/bench_ui.py --runs 20 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.runners.locate import locate  # noqa: E402
from scripts.bench_proxy import daemon  # noqa: E402
from scripts.benchdoc import section_body, write_section  # noqa: E402
from scripts.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from scripts.machine import machine_line  # noqa: E402
from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402

MEASURE = """() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    return {
        fcp: fcp ? fcp.startTime : NaN,
        page: nav.responseEnd - nav.requestStart,
        drawn: Number(document.body.dataset.readyMs),
        bytes: performance.getEntriesByType('resource')
            .filter(r => r.name.includes('/ui/'))
            .reduce((n, r) => n + r.transferSize, nav.transferSize),
    };
}"""
INTRO = """\
The dashboard (`GET /ui/`) in Debian's headless Chromium driven by Playwright, against the real
daemon on loopback with the tiny model in its store.  Cold: a new browser context per load (empty
cache); warm: reloads in one context (files revalidated by ETag).  First paint is the performance
API's first-contentful-paint; page is the HTML's request start to response end; drawn is when the
models and runners are listed (`body[data-ready]`).  Floor: a one-heading `data:` page in the
same browser, what Chromium itself needs to paint.  Medians (p95) of {runs} loads, in ms."""
TARGET = """\
- Target (issue 15): first paint under 200 ms from the local daemon.  The page is about 36 KB
  in 9 files (HTML, CSS, 7 JS modules, modulepreloaded), nothing from elsewhere."""


FLOOR = "data:text/html,<!doctype html><title>x</title><h1>modelrunner</h1>"


async def load(context: Any, url: str) -> dict[str, float]:
    page = await context.new_page()
    try:
        await page.goto(url)
        if url != FLOOR:
            await page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        else:
            await page.wait_for_function("() => performance.getEntriesByType('paint').length")
        result: dict[str, float] = await page.evaluate(MEASURE)
        return result
    finally:
        await page.close()


async def measure(url: str, runs: int) -> dict[str, list[dict[str, float]]]:
    from playwright.async_api import async_playwright

    out: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "floor": []}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            await load(await browser.new_context(), url)  # the browser's own first start
            warm = await browser.new_context()
            await load(warm, url)
            for _ in range(runs):
                context = await browser.new_context()
                out["cold"].append(await load(context, url))
                await context.close()
                out["warm"].append(await load(warm, url))
                out["floor"].append(await load(warm, FLOOR))
        finally:
            await browser.close()
    return out


def cell(values: list[float]) -> str:
    ordered = sorted(v for v in values if v == v)  # NaN: not measured (the floor's "drawn")
    if not ordered:
        return "—"
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.0f} ({p95:.0f})"


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| load | first paint | page answered | state drawn | bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, rows in results.items():
        lines.append(
            f"| {case} | {cell([r['fcp'] for r in rows])} | {cell([r['page'] for r in rows])} "
            f"| {cell([r['drawn'] for r in rows])} "
            f"| {statistics.median(r['bytes'] for r in rows):.0f} |"
        )
    return "\n".join(lines)


def verdict(results: dict[str, list[dict[str, float]]]) -> str:
    warm = statistics.median(r["fcp"] for r in results["warm"])
    floor = statistics.median(r["fcp"] for r in results["floor"])
    met = "met" if warm < 200 else "not met"
    return (
        f"- This run: {met} (warm median {warm:.0f} ms); Chromium's own floor was {floor:.0f} ms,"
        f" so the page added about {warm - floor:.0f} ms."
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    binary = (await locate(None)).path
    with tempfile.TemporaryDirectory(prefix="mr-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        gguf = build_tiny_gguf(work / "tiny.gguf")
        async with daemon(work / "home", gguf, binary) as (_sock, port, _pid):
            before = os.getloadavg()[0]
            results = await measure(f"http://127.0.0.1:{port}/ui/", args.runs)
            after = os.getloadavg()[0]
    result = table(results)
    print(result)
    cores = os.cpu_count()
    load_line = f"load average (1 min) {before:.1f} before, {after:.1f} after, on {cores} cores"
    print(load_line)
    if args.write:
        machine = machine_line(await locate(None))
        bullets = [
            f"- Machine: {machine}; {load_line} (other jobs shared it).",
            *TARGET.splitlines(),
            verdict(results),
        ]
        command = f".venv/bin/python scripts/bench_ui.py --runs {args.runs} --write"
        body = section_body(INTRO.format(runs=args.runs), result, bullets, command)
        write_section("Dashboard", body)
    return 0


if __name__ == "__main__":
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: make system-deps installs it")
    sys.exit(asyncio.run(main()))
