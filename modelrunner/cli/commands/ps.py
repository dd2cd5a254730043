"""`modelrunner ps`: the runners (llama-server processes) the daemon has loaded."""

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
    """``sha256:`` IDs as 12 hex, references in Docker's short form."""
    if name.startswith("sha256:"):
        return name.removeprefix("sha256:")[:12]
    return display_name(name.lower())


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
    epilog = "example:\n  modelrunner ps"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the daemon's JSON")

    def run(self, args: argparse.Namespace) -> int:
        entries = connect(args).get_json("/engines/ps") or []
        if args.json:
            print(json.dumps(entries, indent=4, ensure_ascii=False))
        else:
            print(table(HEADERS, runner_rows(entries, time.time())))
        return 0
