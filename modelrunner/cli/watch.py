"""`modelrunner ps -w`: the runner table, redrawn on each runner event from ``/engines/events``.

The stream is subscribed before the first table is fetched, so no change falls between them.
On a terminal the table is redrawn in place; otherwise each change prints one line (``HH:MM:SS
ready ai/smollm2 (completion, pid 123)``) and the table after it, so a log or a test can read it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelrunner.cli.client import Client
from modelrunner.cli.format import table
from modelrunner.cli.sse import read_events

RowsFn = Callable[[list[Mapping[str, Any]], float], list[list[str]]]
CLEAR = "\x1b[H\x1b[2J"


def describe(event: Mapping[str, Any]) -> str:
    """One line for a runner event."""
    when = time.strftime("%H:%M:%S", time.localtime(event.get("time") or time.time()))
    detail = [str(event.get("mode") or "")]
    if event.get("pid"):
        detail.append(f"pid {event['pid']}")
    if event.get("reason"):
        detail.append(str(event["reason"]))
    if event.get("exit_code") is not None:
        detail.append(f"exit code {event['exit_code']}")
    return f"{when} {event.get('state')} {event.get('model')} ({', '.join(detail)})"


def watch_ps(client: Client, *, json_rows: bool, rows: RowsFn, headers: Sequence[str]) -> int:
    """Follow runner events until the daemon ends the stream (or Ctrl+C)."""
    stream = client.request(
        "GET", "/engines/events", headers={"Accept": "text/event-stream"}, stream=True
    )
    tty = sys.stdout.isatty()

    def show(event: Mapping[str, Any] | None) -> None:
        entries = client.get_json("/engines/ps") or []
        if json_rows:
            print(json.dumps({"event": event, "runners": entries}, ensure_ascii=False), flush=True)
            return
        text = table(headers, rows(entries, time.time()))
        if tty:
            line = describe(event) if event is not None else ""
            print(f"{CLEAR}{text}\n\n{line}", flush=True)
        else:
            print(f"{describe(event)}\n{text}\n" if event is not None else f"{text}\n", flush=True)

    show(None)
    for kind, data in read_events(stream.lines()):
        if kind == "runner":
            show(json.loads(data))
    print("The daemon ended the event stream.", file=sys.stderr)
    return 0
