"""`modelrunner tag SOURCE TARGET`: give a local model another name."""

from __future__ import annotations

import argparse
import urllib.parse

from modelrunner.cli.base import Command, connect
from modelrunner.cli.client import quote_ref
from modelrunner.errors import InvalidReference


def split_target(target: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); the tag defaults to ``latest``; a digest is refused."""
    if "@" in target:
        raise InvalidReference(f"cannot tag with a digest: {target!r} (give repo[:tag])")
    slash = target.rfind("/")
    colon = target.rfind(":")
    if colon > slash:
        repo, tag = target[:colon], target[colon + 1 :]
    else:
        repo, tag = target, "latest"
    if not repo or not tag:
        raise InvalidReference(f"invalid reference {target!r} (give repo[:tag])")
    return repo, tag


class Tag(Command):
    name = "tag"
    help = "Create a tag TARGET that refers to the model SOURCE"
    epilog = "example:\n  modelrunner tag ai/smollm2 myorg/smollm2:prod"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("source", metavar="SOURCE", help="a local model (tag or ID)")
        parser.add_argument("target", metavar="TARGET", help="the new name, repo[:tag]")

    def run(self, args: argparse.Namespace) -> int:
        repo, tag = split_target(args.target)
        query = urllib.parse.urlencode({"repo": repo, "tag": tag})
        connect(args).request("POST", f"/models/{quote_ref(args.source)}/tag?{query}").close()
        print(f'Model "{args.source}" tagged successfully with "{repo}:{tag}"')
        return 0
