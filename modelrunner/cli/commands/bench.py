"""`modelrunner bench MODEL`: tokens/s and requests/s at each concurrency level.

Docker's ``docker model bench`` flags (``--prompt``, ``--duration`` 30s, ``--concurrency``
1,2,4,8, ``--timeout`` 5m, ``--json``) and its table, plus ``--max-tokens``, the time to first
token (p50/p95) and each level's error count.  The model is loaded by one short request first,
so the first level does not pay for the load.  ``--json`` prints Docker's one JSON document once
every level is done: ``{"model", "prompt", "results": [one object per level]}``, each result with
Docker's field names (``Concurrency``, ``MeanRPS``, ``TotalTokens``, ``TPS``, ``TotalTime`` in
nanoseconds, ``Requests``, ``TokenCounts``) plus ``Errors``, ``TTFTP50`` and ``TTFTP95``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from modelrunner.cli.base import Command, connect
from modelrunner.cli.bench import (
    LevelResult,
    base_tps,
    document,
    one_request,
    request_body,
    run_level,
)
from modelrunner.cli.client import Client, quote_ref
from modelrunner.errors import InvalidRequest, ModelRunnerError

DEFAULT_PROMPT = "Write a comprehensive 100 word summary on whales and their impact on society."
RULE = "-" * 50
WIDE_RULE = "-" * 110


def duration(text: str) -> float:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) or seconds, > 0."""
    from modelrunner.server.settings import parse_keep_alive

    try:
        seconds = parse_keep_alive(text)
    except InvalidRequest:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 2m)") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0s")
    return seconds


def levels(text: str) -> list[int]:
    """``1,2,4,8`` -> sorted unique positive integers."""
    try:
        values = sorted({int(v) for v in text.replace(" ", "").split(",") if v})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if not values or values[0] < 1 or values[-1] > 256:
        raise argparse.ArgumentTypeError("concurrency levels must be integers from 1 to 256")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else "-"


def print_level(r: LevelResult) -> None:
    print(f"  Tokens per second: {r.tokens_per_second:.2f} TPS")
    print(f"  Requests per second: {r.requests_per_second:.2f} RPS")
    print(f"  Total tokens: {r.total_tokens}")
    print(f"  Total requests: {len(r.ok)}")
    print(f"  Errors: {r.errors}")
    print(f"  TTFT p50/p95: {_ms(r.ttft_ms(50))} / {_ms(r.ttft_ms(95))}")
    print(f"  Total time: {r.total_time_s:.2f}s")
    print()


def print_table(results: Sequence[LevelResult]) -> None:
    """Docker's hyperfine-like report, with TTFT and errors in the detailed table."""
    base = base_tps(results)
    best = max((r.tokens_per_second for r in results), default=0.0)
    print("\nBenchmark #1: Tokens per Second at Different Concurrency Levels\n")
    for r in results:
        rel = r.tokens_per_second / base if base > 0 else 1.0
        mark = " fastest" if best > 0 and r.tokens_per_second == best else ""
        print(
            f"Concurrency {r.concurrency}: {r.tokens_per_second:.2f} tokens/sec "
            f"(rel. speed: {rel:.2f}x){mark}"
        )
    print("\nSummary:")
    print(RULE)
    print(f"{'Metric':<25} {'Value':<20}")
    print(RULE)
    if best > 0:
        top = next(r for r in results if r.tokens_per_second == best)
        print(f"{'Max Tokens/sec':<25} {best:<20.2f}")
        print(f"{'Best concurrency':<25} {top.concurrency:<20}")
        if top.concurrency > 1 and base > 0:
            print(f"{'Improvement from 1':<25} {(best - base) / base * 100:.1f}%")
    print(RULE)
    print("\nDetailed Results:")
    print(WIDE_RULE)
    cols = ("Concurrency", "Tokens/sec", "Rel. Speed", "Requests/sec", "Total Tokens")
    print("".join(f"{c:<15}" for c in cols) + f"{'TTFT p50':<12}{'TTFT p95':<12}{'Errors':<8}")
    print(WIDE_RULE)
    for r in results:
        rel = r.tokens_per_second / base if base > 0 else 1.0
        print(
            f"{r.concurrency:<15}{r.tokens_per_second:<15.2f}{rel:<15.2f}"
            f"{r.requests_per_second:<15.2f}{r.total_tokens:<15}"
            f"{_ms(r.ttft_ms(50)):<12}{_ms(r.ttft_ms(95)):<12}{r.errors:<8}"
        )
    print(WIDE_RULE)


class Bench(Command):
    name = "bench"
    help = "Benchmark a model's tokens/s at different concurrency levels"
    epilog = (
        "examples:\n"
        "  modelrunner bench ai/smollm2\n"
        "  modelrunner bench ai/smollm2 --duration 10s --concurrency 1,4 --max-tokens 64 --json"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="MODEL", help="the model to benchmark")
        parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt of each request")
        parser.add_argument(
            "--duration",
            type=duration,
            default=30.0,
            help="how long each concurrency level runs (default 30s)",
        )
        parser.add_argument(
            "--concurrency",
            type=levels,
            default=[1, 2, 4, 8],
            help="comma-separated concurrency levels (default 1,2,4,8)",
        )
        parser.add_argument(
            "--timeout",
            type=duration,
            default=300.0,
            help="longest one request may take (default 5m)",
        )
        parser.add_argument(
            "--max-tokens", type=positive_int, default=None, help="cap on each answer's tokens"
        )
        parser.add_argument(
            "--json", action="store_true", help="print Docker's JSON document at the end"
        )

    def run(self, args: argparse.Namespace) -> int:
        client = connect(args)
        client = Client(client.endpoint, timeout_s=args.timeout)
        client.get_json(f"/models/{quote_ref(args.model)}")  # 404 with the daemon's message
        body = request_body(args.model, args.prompt, args.max_tokens)
        if not args.json:
            print(f"Prompt: {args.prompt}")
            print(f"Duration: {args.duration:g}s per concurrency level")
            print(f"Concurrency levels: {args.concurrency}\n")
            print("Loading the model…", flush=True)
        warm = one_request(client, {**body, "max_tokens": 1}, args.timeout)
        if warm.error is not None:
            raise ModelRunnerError(f"the model did not answer: {warm.error}")
        results: list[LevelResult] = []
        for workers in args.concurrency:
            if not args.json:
                print(f"Running benchmark with concurrency: {workers}", flush=True)
            result = run_level(client, body, workers, args.duration, args.timeout)
            results.append(result)
            first_error = next((s.error for s in result.samples if s.error), None)
            if first_error is not None:
                print(
                    f"modelrunner: {result.errors} request(s) failed at concurrency {workers}; "
                    f"first: {first_error}",
                    file=sys.stderr,
                )
            if not args.json:
                print_level(result)
        if args.json:
            print(json.dumps(document(args.model, args.prompt, results), indent=2))
        else:
            print_table(results)
        return 0
