"""`modelrunner configure --context-size N REF [-- FLAGS...]`: per-model runner settings."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from modelrunner.cli.base import Command, connect
from modelrunner.errors import InvalidRequest


class Configure(Command):
    name = "configure"
    help = "Set a model's runner settings (context size, llama-server flags), kept by the daemon"
    aliases = ("config",)
    epilog = (
        "examples:\n"
        "  modelrunner configure --context-size 8192 ai/smollm2\n"
        "  modelrunner configure ai/smollm2 -- --temp 0.7 --top-k 40\n"
        "  modelrunner configure --show ai/smollm2"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--context-size", type=int, metavar="N", help="context in tokens")
        parser.add_argument(
            "--keep-alive", metavar="DURATION", help="idle time before unload (10m, 0, -1 = never)"
        )
        parser.add_argument(
            "--mode", choices=("completion", "embedding", "reranking"), help="runner mode"
        )
        parser.add_argument(
            "--show",
            action="store_true",
            help="print the stored settings (of MODEL, or all) and where each value comes from",
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="forget MODEL's configure settings: the config file's and defaults apply again",
        )
        parser.add_argument("model", metavar="MODEL", nargs="?", help="tag or ID")
        parser.add_argument(
            "runtime_flags", metavar="FLAGS", nargs="*", help="llama-server flags, after --"
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.show:
            query = "?" + urllib.parse.urlencode({"model": args.model}) if args.model else ""
            stored = connect(args).get_json(f"/engines/_configure{query}")
            print(json.dumps(stored, indent=4, ensure_ascii=False))
            return 0
        if not args.model:
            raise InvalidRequest("give the MODEL to configure")
        if args.reset:
            return self._reset(args)
        body: dict[str, Any] = {"model": args.model}
        if args.context_size is not None:
            if args.context_size < 1:
                raise InvalidRequest(f"--context-size must be >= 1, got {args.context_size}")
            body["context-size"] = args.context_size
        if args.runtime_flags:
            body["runtime-flags"] = list(args.runtime_flags)
        if args.keep_alive is not None:
            body["keep_alive"] = args.keep_alive
        if args.mode:
            body["mode"] = args.mode
        if len(body) == 1:
            raise InvalidRequest(
                "nothing to configure: give --context-size, --keep-alive or -- FLAGS"
            )
        connect(args).request("POST", "/engines/_configure", json_body=body).close()
        print(f"Configured {args.model}: {describe(body)}")
        print("  kept by the daemon (settings.json, above the config file); the runner restarts")
        return 0

    def _reset(self, args: argparse.Namespace) -> int:
        if args.context_size is not None or args.keep_alive or args.runtime_flags or args.mode:
            raise InvalidRequest("--reset takes only MODEL (it clears every configure setting)")
        body = {"model": args.model, **dict.fromkeys(RESET_KEYS)}
        connect(args).request("POST", "/engines/_configure", json_body=body).close()
        print(f"Settings of {args.model} reset: the config file's and the defaults apply again")
        return 0


RESET_KEYS = ("context-size", "runtime-flags", "keep_alive", "pinned")


def describe(body: dict[str, Any]) -> str:
    """What a configure request sets, as the flags a user typed: ``context-size 8192, …``."""
    parts = []
    for key, value in body.items():
        if key == "model":
            continue
        shown = " ".join(value) if isinstance(value, list) else value
        parts.append(f"{key} {shown}")
    return ", ".join(parts)
