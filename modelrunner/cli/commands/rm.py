"""`modelrunner rm [-f] REF...`: untag or delete local models."""

from __future__ import annotations

import argparse
import sys

from modelrunner.cli.base import Command, connect
from modelrunner.cli.client import DaemonError, quote_ref
from modelrunner.errors import ModelRunnerError


class Remove(Command):
    name = "rm"
    help = "Remove local models (untag; delete once no tag is left)"
    aliases = ("remove",)
    epilog = "examples:\n  modelrunner rm ai/smollm2\n  modelrunner rm -f 354bf30d0aa3"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("models", metavar="MODEL", nargs="+", help="tag or ID")
        parser.add_argument(
            "-f",
            "--force",
            action="store_true",
            help="delete even when the model has several tags or a runner is using it",
        )

    def run(self, args: argparse.Namespace) -> int:
        client = connect(args)
        failed = 0
        force = "true" if args.force else "false"
        for ref in args.models:
            try:
                result = client.request("DELETE", f"/models/{quote_ref(ref)}?force={force}").json()
            except ModelRunnerError as e:
                if isinstance(e, DaemonError) and e.http_status == 404:
                    # Docker's wording; the daemon's own message suggests pulling it.
                    e = ModelRunnerError(f"no such model: {ref}")
                if len(args.models) == 1:
                    raise e from None
                print(f"modelrunner: {e.message}", file=sys.stderr)
                failed += 1
                continue
            for line in removal_lines(result):
                print(line)
        return 1 if failed else 0


def removal_lines(result: object) -> list[str]:
    """``[{"Untagged": x}, {"Deleted": id}]`` -> ``Untagged: x`` / ``Deleted: id`` lines."""
    lines: list[str] = []
    if isinstance(result, list):
        for item in result:
            if isinstance(item, dict):
                lines.extend(f"{k}: {v}" for k, v in item.items())
    return lines
