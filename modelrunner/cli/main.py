"""Entry point: parse the verb, run it, render ModelRunnerError as one line on stderr.

Every verb runs under an owner-only umask (``fsmodes.py``): several write into the home without
the daemon (``setup-default``, ``service install``, ``run``'s history, ``serve`` itself).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from modelrunner import __version__, fsmodes
from modelrunner.cli import commands
from modelrunner.cli.base import Command
from modelrunner.errors import ModelRunnerError

# Aliases of verbs whose module is named after the verb, so `modelrunner ls` imports one module.
ALIASES = {"ls": "list", "remove": "rm", "stop": "unload", "config": "configure"}


def _commands_in(module_name: str) -> dict[str, Command]:
    module = importlib.import_module(f"{commands.__name__}.{module_name}")
    found: dict[str, Command] = {}
    for obj in vars(module).values():
        if (
            isinstance(obj, type)
            and issubclass(obj, Command)
            and obj is not Command
            and obj.__module__ == module.__name__
            and getattr(obj, "name", None)
        ):
            found[obj.name] = obj()
    return found


def discover(only: str | None = None) -> list[Command]:
    """Every Command subclass defined in a module of cli/commands/, sorted by name.

    With *only* (a verb), just that verb's module is imported when it is named after the verb:
    start-up then costs one module, not every verb's imports (serve's aiohttp among them).
    """
    if only == "":
        return []  # `--version`: no verb needed
    modules = [info.name for info in pkgutil.iter_modules(commands.__path__)]
    if only is not None:
        module_name = ALIASES.get(only, only).replace("-", "_")
        if module_name in modules:
            found = _commands_in(module_name)
            if any(c.name == only or only in c.aliases for c in found.values()):
                return [found[k] for k in sorted(found)]
    found = {}
    for name in modules:
        found.update(_commands_in(name))
    return [found[k] for k in sorted(found)]


def _verb(argv: Sequence[str]) -> str | None:
    """The verb in *argv*, or None when the whole command list is wanted (help, version)."""
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            next(args, None)
        elif arg in ("-v", "--verbose") or arg.startswith("--config="):
            continue
        elif arg.startswith("-"):
            return None
        else:
            return arg
    return None


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelrunner",
        description="Run AI models locally on llama-server, with Docker Model Runner's API.",
    )
    parser.add_argument("--version", action="version", version=f"modelrunner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--config", help="config file (default ~/.modelrunner/config.yaml)")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for command in discover(verb):
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


def parse(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and the parsed *argv*.

    Words after a verb's flags go to its ``trailing`` positional (`run MODEL --max-tokens 8 hi`):
    argparse alone fills a ``nargs="*"`` positional only from the words before the first flag.
    """
    argv = list(argv)
    verb = _verb(argv)
    if verb is None and argv[:1] == ["--version"]:
        verb = ""
    parser = build_parser(verb)
    args, extras = parser.parse_known_args(argv)
    if extras:
        trailing = getattr(getattr(args, "command", None), "trailing", None)
        if trailing is None or any(word.startswith("-") for word in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        getattr(args, trailing).extend(extras)
    return parser, args


def main(argv: Sequence[str] | None = None) -> int:
    umask = fsmodes.private_umask()
    try:
        return _main(argv)
    finally:
        os.umask(umask)  # for callers in the same process (tests); a CLI process just exits


def _main(argv: Sequence[str] | None) -> int:
    parser, args = parse(sys.argv[1:] if argv is None else argv)
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
        # `modelrunner ls | head -1`: the reader left.  Point stdout at /dev/null so the
        # interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
