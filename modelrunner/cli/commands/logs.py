"""`modelrunner logs [-f] [--runner REF]`: the daemon's log, or one runner's llama-server log.

``GET /logs`` answers the tail of the file (up to 4 MiB).  ``-f`` asks again every
``POLL_INTERVAL_S`` and prints only what is new: the part of the new tail after the end of the
previous one (after a rotation, whatever follows the last lines seen, or the whole tail).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse

from modelrunner.cli.base import Command, connect
from modelrunner.cli.client import Client
from modelrunner.errors import InvalidRequest
from modelrunner.runners.model import MODES

POLL_INTERVAL_S = 1.0
OVERLAP_BYTES = 4096


def new_part(previous: bytes, current: bytes) -> bytes:
    """What *current* (a fresh tail of the log) adds to *previous* (the last tail seen)."""
    if not previous:
        return current
    if current.startswith(previous):
        return current[len(previous) :]
    # The tail window slid (the log grew past the limit) or the file was rotated: find where
    # the end of *previous* sits in *current* (its last line, confirmed by everything before).
    body = previous[-OVERLAP_BYTES:]
    cut = body.rfind(b"\n", 0, len(body) - 1)
    marker = body[cut + 1 :] if cut >= 0 else body
    best = None
    at = current.find(marker)
    while at >= 0:
        end = at + len(marker)
        if previous.endswith(current[:end]):
            best = end
        at = current.find(marker, at + 1)
    return current if best is None else current[best:]


def fetch(client: Client, path: str) -> bytes:
    response = client.request("GET", path, headers={"Accept": "text/plain"})
    return b"".join(response.chunks())


class Logs(Command):
    name = "logs"
    help = "Show the daemon's log, or a model runner's (--runner)"
    epilog = (
        "examples:\n  modelrunner logs\n  modelrunner logs -f --runner ai/smollm2\n"
        "  modelrunner logs --runner ai/mxbai-embed-large --mode embedding"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
        parser.add_argument("--runner", metavar="MODEL", help="the llama-server log of MODEL")
        parser.add_argument(
            "--mode",
            choices=MODES,
            help="which of MODEL's runners (default: the one it has, completion first)",
        )

    def run(self, args: argparse.Namespace) -> int:
        path = "/logs"
        if args.mode and not args.runner:
            raise InvalidRequest("--mode needs --runner MODEL")
        if args.runner:
            query = {"model": args.runner, **({"mode": args.mode} if args.mode else {})}
            path += "?" + urllib.parse.urlencode(query)
        client = connect(args)
        out = sys.stdout.buffer
        seen = fetch(client, path)
        out.write(seen)
        out.flush()
        while args.follow:
            time.sleep(POLL_INTERVAL_S)
            current = fetch(client, path)
            out.write(new_part(seen, current))
            out.flush()
            seen = current
        return 0
