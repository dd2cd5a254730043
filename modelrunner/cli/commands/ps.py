"""`modelrunner ps [-w]`: the runners (llama-server processes) the daemon has loaded.

``-w`` (watch) follows ``GET /engines/events`` and prints the table again after each runner
event (loading, ready, stopping, stopped, crashed, failed): on a terminal in place, elsewhere
as a line saying what happened followed by the new table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any

from modelrunner.cli.base import Command, connect
from modelrunner.cli.format import binary_size, display_name, table, until

HEADERS = ("MODEL NAME", "BACKEND", "MODE", "MEMORY", "UNTIL")


def runner_name(name: str) -> str:
    """``sha256:`` IDs as 12 hex, references in Docker's short form, cased as ``ls`` shows them.

    Docker's ``ps`` lower-cases the name (``gemma3:270m-q4_k_m`` where ``ls`` says
    ``gemma3:270M-Q4_K_M``); a tag is case-sensitive, so the name is kept as it is stored."""
    if name.startswith("sha256:"):
        return name.removeprefix("sha256:")[:12]
    return display_name(name)


def runner_rows(entries: list[Mapping[str, Any]], now: float) -> list[list[str]]:
    rows = []
    for e in entries:
        rss = e.get("rss_bytes", e.get("memory"))
        rows.append(
            [
                runner_name(str(e.get("model_name") or e.get("model") or "?")),
                str(e.get("backend_name") or "llama.cpp"),
                str(e.get("mode") or "completion"),
                binary_size(rss) if isinstance(rss, (int, float)) and rss > 0 else "-",
                until(e, now),
            ]
        )
    return rows


class Ps(Command):
    name = "ps"
    help = "List the running models (runners)"
    epilog = "examples:\n  modelrunner ps\n  modelrunner ps -w"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the daemon's JSON")
        parser.add_argument(
            "-w", "--watch", action="store_true", help="print again whenever a runner changes"
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.watch:
            from modelrunner.cli.watch import watch_ps

            return watch_ps(connect(args), json_rows=args.json, rows=runner_rows, headers=HEADERS)
        entries = connect(args).get_json("/engines/ps") or []
        if args.json:
            print(json.dumps(entries, indent=4, ensure_ascii=False))
        else:
            print(table(HEADERS, runner_rows(entries, time.time())))
        return 0
