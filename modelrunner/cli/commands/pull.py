"""`modelrunner pull REF`: download a model into the store, with per-layer progress."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from modelrunner.cli.base import Command, connect, progress_renderer
from modelrunner.cli.client import Client
from modelrunner.cli.progress import follow


def pull_model(client: Client, ref: str, *, out: TextIO | None = None) -> str:
    """POST /models/create and render its progress on *out*; return the daemon's final message."""
    out = out or sys.stdout
    body: dict[str, str] = {"from": ref}
    token = os.environ.get("HF_TOKEN", "")
    if token and ref.startswith(("hf.co/", "huggingface.co/")):
        body["bearer-token"] = token
    response = client.request("POST", "/models/create", json_body=body, stream=True)
    return follow(response.lines(), progress_renderer(out), warn=sys.stderr)


class Pull(Command):
    name = "pull"
    help = "Pull a model from a registry into the local store"
    epilog = "example:\n  modelrunner pull ai/smollm2:360M-Q4_K_M"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="MODEL", help="reference, e.g. ai/smollm2")

    def run(self, args: argparse.Namespace) -> int:
        print(pull_model(connect(args), args.model), flush=True)
        return 0
