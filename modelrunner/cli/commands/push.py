"""`modelrunner push REF`: upload a model from the store to its registry, with progress."""

from __future__ import annotations

import argparse
import sys

from modelrunner.cli.base import Command, connect, progress_renderer
from modelrunner.cli.client import quote_ref
from modelrunner.cli.progress import follow


class Push(Command):
    name = "push"
    help = "Push a model from the local store to its registry"
    epilog = "example:\n  modelrunner push registry.example.com/me/tiny:v1"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="MODEL", help="a tag of a local model")

    def run(self, args: argparse.Namespace) -> int:
        client = connect(args)
        response = client.request("POST", f"/models/{quote_ref(args.model)}/push", stream=True)
        print(follow(response.lines(), progress_renderer(sys.stdout), warn=sys.stderr), flush=True)
        return 0
