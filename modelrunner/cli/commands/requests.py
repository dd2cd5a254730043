"""`modelrunner requests [-f] [--model M] [--include-existing] [--json]`: the request log.

Docker's ``docker model requests``: ``GET /engines/requests`` (the last requests per model), or
with ``-f`` its event stream, printing each request as it completes.  ``--json`` prints the
daemon's JSON (Docker's shape; with ``-f`` one record object a line), else one table row per
request: when, which model (named as ``ls`` and ``ps`` name it), the route, the status, how
long, and the prompt and answer as text (the record's ``prompt`` and ``answer``), cut.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from modelrunner.cli.base import Command, connect
from modelrunner.cli.format import display_name, table
from modelrunner.cli.sse import read_events
from modelrunner.server.observe.record_text import answer_text, prompt_text

HEADERS = ("TIME", "MODEL", "STATUS", "DURATION", "URL", "PROMPT", "ANSWER")
SNIPPET = 40


def _cut(text: str, width: int = SNIPPET) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def prompt_of(record: Mapping[str, Any]) -> str:
    """The daemon's ``prompt`` text; read from the request for a daemon without it (Docker's)."""
    prompt = record.get("prompt")
    return prompt if isinstance(prompt, str) else prompt_text(str(record.get("request", "")))


def answer_of(record: Mapping[str, Any]) -> str:
    """The error's message, else the daemon's ``answer`` text (read from the response for a
    daemon without it): an answer's text in every API family, never its JSON."""
    if record.get("error"):
        error = _json(str(record["error"]))
        if isinstance(error, dict):
            inner = error.get("error", error)
            message = inner.get("message") if isinstance(inner, dict) else inner
            return f"error: {message}"
        return f"error: {record['error']}"
    answer = record.get("answer")
    return answer if isinstance(answer, str) else answer_text(str(record.get("response") or ""))


def row(record: Mapping[str, Any]) -> list[str]:
    ts = record.get("timestamp") or 0
    duration = record.get("duration_ms")
    status = record.get("status_code") or 0
    return [
        time.strftime("%H:%M:%S", time.localtime(ts)),
        display_name(str(record.get("model", ""))),
        str(status) if status else "…",
        f"{duration / 1000:.2f}s" if isinstance(duration, (int, float)) else "-",
        str(record.get("url", "")),
        _cut(prompt_of(record)),
        _cut(answer_of(record)),
    ]


def records_of(groups: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out = [r for g in groups for r in g.get("records", ())]
    return sorted(out, key=lambda r: r.get("timestamp") or 0)


class Requests(Command):
    name = "requests"
    help = "Show the daemon's recent requests and answers (-f: follow new ones)"
    epilog = (
        "examples:\n"
        "  modelrunner requests\n"
        "  modelrunner requests --model ai/smollm2 --json\n"
        "  modelrunner requests -f --include-existing"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        self._parser = parser
        parser.add_argument("-f", "--follow", action="store_true", help="follow new requests")
        parser.add_argument(
            "--include-existing",
            action="store_true",
            help="with -f: print the kept requests first",
        )
        parser.add_argument("--model", metavar="MODEL", help="only this model's requests")
        parser.add_argument("--json", action="store_true", help="print the daemon's JSON")

    def run(self, args: argparse.Namespace) -> int:
        if args.include_existing and not args.follow:
            self._parser.error("--include-existing can only be used with --follow")
        query: dict[str, str] = {}
        if args.model:
            query["model"] = args.model
        if args.follow and args.include_existing:
            query["include_existing"] = "true"
        path = "/engines/requests" + ("?" + urllib.parse.urlencode(query) if query else "")
        client = connect(args)
        if not args.follow:
            groups = client.get_json(path) or []
            if args.json:
                print(json.dumps(groups, indent=2, ensure_ascii=False))
            else:
                print(table(HEADERS, [row(r) for r in records_of(groups)]))
            return 0
        response = client.request("GET", path, headers={"Accept": "text/event-stream"}, stream=True)
        print("Connected to request stream. Press Ctrl+C to stop.", file=sys.stderr, flush=True)
        if not args.json:
            print("  ".join(HEADERS), flush=True)
        for event, data in read_events(response.lines()):
            if event not in ("new_request", "existing_request"):
                continue
            for record in records_of(json.loads(data)):
                line = (
                    json.dumps(record, ensure_ascii=False) if args.json else "  ".join(row(record))
                )
                print(line, flush=True)
        print("Stream closed by the daemon.", file=sys.stderr)
        return 0
