"""`modelrunner setup-default`: put the embedded Gemma 3 270M into the store, offline."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from modelrunner.cli.base import Command
from modelrunner.config import Config
from modelrunner.service.default_model import DEFAULT_TAG


class SetupDefault(Command):
    name = "setup-default"
    help = (
        f"Put the embedded default model ({DEFAULT_TAG}) into the store, with no registry, "
        "and check that llama-server can be found"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--tag", default=DEFAULT_TAG, help=f"tag to store it as ({DEFAULT_TAG})"
        )
        parser.add_argument(
            "--force", action="store_true", help="package it again even if the tag exists"
        )
        parser.add_argument(
            "--skip-llama-check", action="store_true", help="do not look for llama-server"
        )

    def run(self, args: argparse.Namespace) -> int:
        # Imported here: `modelrunner --help` loads every command module, and these pull in the
        # store and the runners.
        from modelrunner.logs import configure as configure_logs
        from modelrunner.runners.locate import find_binary
        from modelrunner.service.default_model import setup_default

        config = Config.load(Path(args.config) if args.config else None)
        # Our own lines say what happens; the store's info events would repeat them.
        configure_logs("debug" if config.log_level == "debug" else "warning")
        asyncio.run(setup_default(config, tag=args.tag, force=args.force, say=_say))
        if not args.skip_llama_check:
            # Raises BinaryNotFound with every place tried and how to install one
            # (`brew install llama.cpp` on macOS).
            path, _ = find_binary(config.runners.llama_server_path)
            _say(f"llama-server: {path}")
        return 0


def _say(line: str) -> None:
    print(f"setup-default: {line}", flush=True)
