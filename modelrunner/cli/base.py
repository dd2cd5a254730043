"""The Command base class: one verb per module in cli/commands/, found automatically."""

from __future__ import annotations

import argparse
from typing import ClassVar


class Command:
    """One verb.  Subclasses set ``name`` and ``help`` and live one per module in cli/commands/."""

    name: ClassVar[str]
    help: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare this verb's flags and positionals."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError
