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
        from modelrunner.runners.engine.choose import choose

        config = Config.load(Path(args.config) if args.config else None)
        # Our own lines say what happens; the store's info events would repeat them.
        configure_logs("debug" if config.log_level == "debug" else "warning")
        asyncio.run(_setup(config, args.tag, args.force))
        if not args.skip_llama_check:
            # Raises BinaryNotFound with every place tried and how to get one that runs here
            # (`modelrunner engine install`; `brew install llama.cpp` on macOS).
            runners = config.runners
            choice = asyncio.run(choose(runners.llama_server_path, engine=runners.engine))
            _say(f"llama-server: {choice.path} ({choice.source})")
        return 0


# The embedded Gemma is the base (pretrained) model: it never ends its turn, so an answer with no
# max_tokens would run until the context is full (8192 tokens).  A default answer length, kept
# as a `_configure` setting, bounds it; `modelrunner configure` changes it like any other.
DEFAULT_ANSWER_FLAGS = ("--n-predict", "512")


async def _setup(config: Config, tag: str, force: bool) -> None:
    from modelrunner.server.settings import SettingsFile
    from modelrunner.service.default_model import setup_default

    model, _ = await setup_default(config, tag=tag, force=force, say=_say)
    settings = SettingsFile(config.home / "settings.json")
    await settings.load()
    if settings.get(model.id) is None:
        await settings.update(model.id, {"runtime_flags": DEFAULT_ANSWER_FLAGS}, tag)
        _say(f"answers end after {DEFAULT_ANSWER_FLAGS[1]} tokens unless a request says otherwise")


def _say(line: str) -> None:
    print(f"setup-default: {line}", flush=True)
