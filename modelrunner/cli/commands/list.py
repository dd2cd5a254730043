"""`modelrunner list` / `ls`: the models in the local store."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from modelrunner.cli.base import Command, connect
from modelrunner.cli.format import display_name, model_rows, short_id, table

HEADERS = (
    "MODEL NAME",
    "PARAMETERS",
    "QUANTIZATION",
    "ARCHITECTURE",
    "FORMAT",  # ours: gguf (llama.cpp) or safetensors (MLX)
    "MODEL ID",
    "CREATED",
    "SIZE",
)


def tag_matches(tag: str, pattern: str) -> bool:
    """``ls NAME``: a tag matches its stored or display form, with or without its tag part."""
    p = pattern.lower()
    wanted = {p, display_name(p)}
    shown = display_name(tag.lower())
    untagged = shown.rpartition(":")[0] if ":" in shown.rsplit("/", 1)[-1] else shown
    return bool(wanted & {tag.lower(), shown, untagged})


def filter_models(models: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
    """The models (with only their matching tags) that ``ls PATTERN`` shows; an ID keeps all."""
    kept = []
    for m in models:
        model_id = str(m.get("id", ""))
        if pattern.lower() in (model_id, short_id(model_id)):
            kept.append(m)
            continue
        tags = [t for t in m.get("tags") or [] if tag_matches(t, pattern)]
        if tags:
            kept.append({**m, "tags": tags})
    return kept


class List(Command):
    name = "list"
    help = "List the models in the local store"
    aliases = ("ls",)
    epilog = "examples:\n  modelrunner ls\n  modelrunner ls --json\n  modelrunner ls -q"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="MODEL", nargs="?", help="show only this model")
        out = parser.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="print the daemon's JSON")
        out.add_argument("--openai", action="store_true", help="print OpenAI's model list")
        out.add_argument("-q", "--quiet", action="store_true", help="print model IDs only")

    def run(self, args: argparse.Namespace) -> int:
        client = connect(args)
        if args.openai:
            print(json.dumps(client.get_json("/engines/v1/models"), indent=4, ensure_ascii=False))
            return 0
        models = client.get_json("/models") or []
        if args.model:
            models = filter_models(models, args.model)
        if args.json:
            print(json.dumps(models, indent=4, ensure_ascii=False))
        elif args.quiet:
            seen: list[str] = []
            for m in models:
                sid = short_id(str(m.get("id", "")))
                if sid not in seen:
                    seen.append(sid)
            if seen:
                print("\n".join(seen))
        else:
            print(table(HEADERS, model_rows(models, time.time())))
        return 0
