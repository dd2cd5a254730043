"""`modelrunner unload [--all | REF...]`: stop idle runners now."""

from __future__ import annotations

import argparse

from modelrunner.cli.base import Command, connect
from modelrunner.errors import InvalidRequest


class Unload(Command):
    name = "unload"
    help = "Stop the runners of models (or of all models) that are idle, pinned ones included"
    aliases = ("stop",)
    epilog = (
        "Pinned models are stopped too: pinning keeps a model from eviction and idle unloads, not\n"
        "from an explicit unload. A pinned model loads again on its next request (or restart).\n\n"
        "examples:\n  modelrunner unload ai/smollm2\n  modelrunner unload --all"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("models", metavar="MODEL", nargs="*", help="models to unload")
        parser.add_argument("--all", action="store_true", help="unload every idle model")
        parser.add_argument("--backend", default="", help=argparse.SUPPRESS)

    def run(self, args: argparse.Namespace) -> int:
        if args.all == bool(args.models):
            raise InvalidRequest("give either model references or --all")
        body = {"all": bool(args.all), "backend": args.backend, "models": list(args.models)}
        result = connect(args).post_json("/engines/unload", body) or {}
        count = int(result.get("unloaded_runners") or 0)
        pinned = int(result.get("pinned") or 0)
        if count and pinned:
            print(f"Unloaded {count} model(s), {pinned} of them pinned (they load again on use).")
        elif count:
            print(f"Unloaded {count} model(s).")
        elif args.all:
            print("No models are running.")
        else:
            print("No such model(s) running.")
        return 0
