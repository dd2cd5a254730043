"""`modelrunner logs [-f] [--runner REF]`: the daemon's log, or one runner's llama-server log."""

from __future__ import annotations

import argparse
import sys
import urllib.parse

from modelrunner.cli.base import Command, connect


class Logs(Command):
    name = "logs"
    help = "Show the daemon's log, or a model runner's (--runner)"
    epilog = "examples:\n  modelrunner logs\n  modelrunner logs -f --runner ai/smollm2"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
        parser.add_argument("--runner", metavar="MODEL", help="the llama-server log of MODEL")

    def run(self, args: argparse.Namespace) -> int:
        query = {}
        if args.runner:
            query["model"] = args.runner
        if args.follow:
            query["follow"] = "true"
        path = "/logs" + ("?" + urllib.parse.urlencode(query) if query else "")
        response = connect(args).request("GET", path, stream=args.follow, headers={"Accept": "*/*"})
        out = sys.stdout.buffer
        for chunk in response.chunks():
            out.write(chunk)
            out.flush()
        return 0
