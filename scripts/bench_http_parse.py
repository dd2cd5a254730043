#!/usr/bin/env python3
"""The fast lane's request-head parse: llhttp (``httptools``, today's ``fasthttp``) against the
hand-written regex parser it replaced (``fasthttp.py`` of an earlier commit, loaded from git),
side by side in one process on the same heads.

Two figures per parser, CPU time (``time.process_time``) per call, median of the rounds:
- first sight: a head never seen before (the parse itself, ``_parse_head``);
- known: the same head again with another ``Content-Length``, as clients send it, which both
  look up instead of parsing (``parse_head``; what the hot path pays).
The end-to-end figures are ``scripts/bench_proxy.py``'s (docs/benchmarks.md, Proxy).

    .venv/bin/python scripts/bench_http_parse.py --before 07b10db --write
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelrunner.server.relay import fasthttp  # noqa: E402
from scripts.benchdoc import section_body, write_section  # noqa: E402
from scripts.machine import cpu_line  # noqa: E402

HEADS = {
    "openai package": (
        b"POST /engines/v1/chat/completions HTTP/1.1\r\nHost: localhost:12434\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nUser-Agent: OpenAI/Python 1.99.0\r\n"
        b"X-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.99.0\r\n"
        b"X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n"
        b"X-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-mr-0123456789\r\n"
        b"X-Stainless-Async: false\r\nX-Stainless-Retry-Count: 0\r\nContent-Length: 123"
    ),
    "curl": (
        b"POST /engines/v1/chat/completions HTTP/1.1\r\nHost: localhost:12434\r\n"
        b"User-Agent: curl/7.88.1\r\nAccept: */*\r\nContent-Type: application/json\r\n"
        b"Content-Length: 123"
    ),
}


def load_before(rev: str) -> ModuleType:
    """``modelrunner/server/relay/fasthttp.py`` as it was at *rev*, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:modelrunner/server/relay/fasthttp.py"],
        check=True,
        capture_output=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "fasthttp_before.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("fasthttp_before", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def per_call_ns(fn: Callable[[bytes], Any], heads: list[bytes]) -> float:
    started = time.process_time()
    for head in heads:
        fn(head)
    return (time.process_time() - started) / len(heads) * 1e9


def measure(module: ModuleType, head: bytes, n: int) -> tuple[float, float]:
    """(first sight, known) ns per call for *module*'s parser on *head*."""
    assert module._parse_head(head) is not None, "the parser refuses the bench's head"
    fresh = [head.replace(b"Host: localhost", b"Host: localhost%d" % i, 1) for i in range(n)]
    first = per_call_ns(module._parse_head, fresh)
    module.parse_head(head)  # seen once: known from here on
    lengths = [
        head.replace(b"Content-Length: 123", b"Content-Length: %d" % (i % 9000)) for i in range(n)
    ]
    known = per_call_ns(module.parse_head, lengths)
    return first, known


def run(args: argparse.Namespace) -> str:
    parsers = {f"regex ({args.before})": load_before(args.before), "llhttp (httptools)": fasthttp}
    rows = []
    for label, head in HEADS.items():
        for name, module in parsers.items():
            results = [measure(module, head, args.calls) for _ in range(args.rounds)]
            first = statistics.median(r[0] for r in results)
            known = statistics.median(r[1] for r in results)
            rows.append(f"| {label} | {name} | {first / 1000:.2f} | {known / 1000:.3f} |")
    table = "\n".join(
        [
            "| head | parser | first sight (µs CPU / head) | known head (µs CPU / head) |",
            "|---|---|---:|---:|",
            *rows,
        ]
    )
    intro = (
        "The fast lane's request-head parse, llhttp (`httptools`, the parser of Node.js and "
        "aiohttp, strict) against the regex parser it replaced (`fasthttp.py` at "
        f"{args.before}, loaded from git), one process, the same heads, {args.calls:,} calls "
        f"a round, median of {args.rounds} rounds, CPU time per call. First sight: a head "
        "not seen before. Known: the same head with another `Content-Length`, looked up by "
        "both instead of parsed (`ByRestOfHead`), which is what a client's repeated requests "
        "cost."
    )
    bullets = [f"- Machine: {cpu_line()}; Python {sys.version.split()[0]}"]
    command = f".venv/bin/python scripts/bench_http_parse.py --before {args.before} --write"
    return section_body(intro, table, bullets, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--before", default="07b10db", help="the commit of the regex parser")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    body = run(args)
    print(body)
    if args.write:
        write_section("Request-head parse", body)


if __name__ == "__main__":
    main()
