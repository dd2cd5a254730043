"""The Command base class: one verb per module in cli/commands/, found automatically.

Also the few things every verb needs: a client for the daemon named by ``--config`` and the
environment, and whether stdout is a terminal that may be coloured.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, ClassVar

from modelrunner.cli.format import color_enabled

if TYPE_CHECKING:
    from typing import TextIO

    from modelrunner.cli.client import Client
    from modelrunner.cli.progress import ProgressRenderer
    from modelrunner.config import Config


class Command:
    """One verb.  Subclasses set ``name`` and ``help`` and live one per module in cli/commands/."""

    name: ClassVar[str]
    help: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    epilog: ClassVar[str | None] = None  # examples shown by --help
    # A list positional (nargs="*") that also takes the words found after the flags.
    trailing: ClassVar[str | None] = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare this verb's flags and positionals."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``--config`` (else ``$MODEL_RUNNER_HOME/config.yaml``), env applied."""
    from pathlib import Path

    from modelrunner.config import Config

    path = getattr(args, "config", None)
    return Config.load(Path(path) if path else None, os.environ)


def connect(args: argparse.Namespace) -> Client:
    """A client for the daemon: ``MODEL_RUNNER_HOST`` if set, else the configured Unix socket."""
    from modelrunner.cli.client import Client, resolve_endpoint

    return Client(resolve_endpoint(getattr(args, "config", None), os.environ))


def stdout_color() -> bool:
    """Colour on stdout: a terminal, and ``NO_COLOR`` unset."""
    return color_enabled(os.environ, sys.stdout.isatty())


def progress_renderer(out: TextIO, *, mode: str | None = None) -> ProgressRenderer:
    """Bars sized to the terminal (coloured unless NO_COLOR) on a TTY, plain lines elsewhere."""
    import shutil

    from modelrunner.cli.progress import ProgressRenderer

    tty = out.isatty()
    columns = shutil.get_terminal_size().columns if tty else None
    color = tty and color_enabled(os.environ, True)
    return ProgressRenderer(out, tty=tty, color=color, mode=mode, columns=columns)
