"""`modelrunner inspect REF`: one model's details as JSON."""

from __future__ import annotations

import argparse
import json

from modelrunner.cli.base import Command, connect
from modelrunner.cli.client import quote_ref


class Inspect(Command):
    name = "inspect"
    help = "Show a model's details as JSON"
    epilog = (
        "examples:\n  modelrunner inspect ai/smollm2\n  modelrunner inspect --openai ai/smollm2"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="MODEL", help="tag or ID")
        parser.add_argument("--openai", action="store_true", help="OpenAI's model format")
        parser.add_argument(
            "-r", "--remote", action="store_true", help="ask the registry instead of the store"
        )

    def run(self, args: argparse.Namespace) -> int:
        ref = quote_ref(args.model)
        if args.openai:
            path = f"/engines/v1/models/{ref}"
        else:
            path = f"/models/{ref}" + ("?remote=true" if args.remote else "")
        data = connect(args).get_json(path)
        print(json.dumps(data, indent=4, ensure_ascii=False))
        return 0
