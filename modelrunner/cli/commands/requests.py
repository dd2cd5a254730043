"""`modelrunner requests [-f] [--model M] [--include-existing] [--json]`: the request log.

Docker's ``docker model requests``: ``GET /engines/requests`` (the last requests per model), or
with ``-f`` its event stream, printing each request as it completes.  ``--json`` prints the
daemon's JSON (Docker's shape; with ``-f`` one record object a line), else one table row per
request: when, which model, the route, the status, how long, and the prompt and answer, cut.
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
from modelrunner.cli.format import table
from modelrunner.cli.sse import read_events

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


def prompt_of(request: str) -> str:
    """The last user message (chat), the prompt (completions) or the input (embeddings)."""
    body = _json(request)
    if not isinstance(body, dict):
        return request
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        if isinstance(content, list):
            content = " ".join(p["text"] for p in content if isinstance(p, dict) and "text" in p)
        return str(content or "")
    for key in ("prompt", "input", "query"):
        if key in body:
            return str(body[key])
    return request


def answer_of(record: Mapping[str, Any]) -> str:
    if record.get("error"):
        error = _json(str(record["error"]))
        if isinstance(error, dict):
            inner = error.get("error", error)
            message = inner.get("message") if isinstance(inner, dict) else inner
            return f"error: {message}"
        return f"error: {record['error']}"
    body = _json(str(record.get("response") or ""))
    if isinstance(body, dict):
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            message = choices[0].get("message")
            if isinstance(message, dict):
                return str(message.get("content") or "")
            return str(choices[0].get("text") or "")
        if isinstance(body.get("data"), list):
            return f"{len(body['data'])} embedding(s)"
    return str(record.get("response") or "")


def row(record: Mapping[str, Any]) -> list[str]:
    ts = record.get("timestamp") or 0
    duration = record.get("duration_ms")
    status = record.get("status_code") or 0
    return [
        time.strftime("%H:%M:%S", time.localtime(ts)),
        str(record.get("model", "")),
        str(status) if status else "…",
        f"{duration / 1000:.2f}s" if isinstance(duration, (int, float)) else "-",
        str(record.get("url", "")),
        _cut(prompt_of(str(record.get("request", "")))),
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
