"""`modelrunner run REF [PROMPT]`: one answer, or an interactive chat; pulls a missing model."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from modelrunner.cli.base import Command, connect, load_config, stdout_color
from modelrunner.cli.chat import Chat, stream_answer
from modelrunner.cli.client import Client, DaemonError, quote_ref
from modelrunner.cli.commands.pull import pull_model


def ensure_local(client: Client, model: str) -> None:
    """Pull *model* (showing progress) when the store does not have it."""
    try:
        client.request("GET", f"/models/{quote_ref(model)}").close()
    except DaemonError as e:
        if e.http_status != 404:
            raise
        print(f"Unable to find model '{model}' locally. Pulling from the registry.", flush=True)
        print(pull_model(client, model), flush=True)


@contextlib.contextmanager
def readline_history(path: Path | None) -> Iterator[None]:
    """Line editing and a persistent history for ``input()``, when readline exists."""
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    if path is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(path)


class Run(Command):
    name = "run"
    help = "Run a model: answer PROMPT, or chat interactively without one"
    trailing = "prompt"  # `run MODEL --max-tokens 8 "hi"`, not only `run MODEL "hi" --max-tokens 8`
    epilog = (
        "examples:\n"
        '  modelrunner run ai/smollm2 "Write a haiku about the sea"\n'
        "  modelrunner run ai/smollm2          # interactive chat; /bye to leave"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", metavar="MODEL", help="tag or ID (pulled if missing)")
        parser.add_argument("prompt", metavar="PROMPT", nargs="*", help="one prompt to answer")
        parser.add_argument("--max-tokens", type=int, metavar="N", help="cap each answer's length")
        parser.add_argument(
            "-d", "--detach", action="store_true", help="load the model, then exit (no prompt)"
        )
        parser.add_argument(
            "--color", choices=("auto", "yes", "no"), default="auto", help="dim reasoning text"
        )
        parser.add_argument(
            "--debug", action="store_true", help="show each request's size and token usage"
        )

    def run(self, args: argparse.Namespace) -> int:
        client = connect(args)
        ensure_local(client, args.model)
        if args.detach:
            client.request("POST", f"/models/{quote_ref(args.model)}/load").close()
            return 0
        color = {"yes": True, "no": False}.get(args.color, stdout_color())
        prompt = " ".join(args.prompt)
        if not sys.stdin.isatty():
            piped = sys.stdin.read()
            prompt = f"{prompt}\n\n{piped}".strip() if prompt else piped.strip()
            if not prompt:
                return 0
        if prompt:
            answer = stream_answer(
                client,
                args.model,
                [{"role": "user", "content": prompt}],
                sys.stdout,
                color=color,
                max_tokens=args.max_tokens,
            )
            print(flush=True)
            if args.debug and answer.usage:
                usage = json.dumps(answer.usage, sort_keys=True)
                print(f"[debug] usage: {usage}", file=sys.stderr)
            return 130 if answer.interrupted else 0
        # Load the runner before the first prompt, so the first answer starts at once.
        client.request("POST", f"/models/{quote_ref(args.model)}/load").close()
        history = load_config(args).home / "run_history"
        with readline_history(history):
            return Chat(
                client,
                args.model,
                out=sys.stdout,
                err=sys.stderr,
                color=color,
                max_tokens=args.max_tokens,
                debug=args.debug,
            ).loop()
