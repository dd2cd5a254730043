"""Entry point: parse the verb, run it, render ModelRunnerError as one line on stderr."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from modelrunner import __version__
from modelrunner.cli import commands
from modelrunner.cli.base import Command
from modelrunner.errors import ModelRunnerError


def discover() -> list[Command]:
    """Every Command subclass defined in a module of cli/commands/, sorted by name."""
    found: dict[str, Command] = {}
    for info in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Command)
                and obj is not Command
                and obj.__module__ == module.__name__
                and getattr(obj, "name", None)
            ):
                found[obj.name] = obj()
    return [found[k] for k in sorted(found)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelrunner",
        description="Run AI models locally on llama-server, with Docker Model Runner's API.",
    )
    parser.add_argument("--version", action="version", version=f"modelrunner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--config", help="config file (default ~/.modelrunner/config.yaml)")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for command in discover():
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            aliases=list(command.aliases),
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(p)
        p.set_defaults(command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        return command.run(args)
    except ModelRunnerError as e:
        if args.verbose or os.environ.get("MODELRUNNER_DEBUG"):
            raise
        print(f"modelrunner: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
