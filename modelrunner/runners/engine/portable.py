"""
``python -m modelrunner.runners.engine.portable [--jobs N]``: the portable llama-server build
(what ``modelrunner engine build --portable`` does) with only the engine's own modules on the
path.

Why not the CLI: the container image's engine stage copies just the modules this build imports
(``scripts/build_image.sh`` stages them), so a change elsewhere in the project leaves that
stage, forty minutes of compiling, cached.  The CLI would pull in the whole package.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from modelrunner.runners.engine import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelrunner.runners.engine.portable")
    parser.add_argument("--jobs", type=int, help="parallel compile jobs (default: all cores)")
    args = parser.parse_args(argv)
    shown = [-1]

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != shown[0]:  # a line every tenth: a build log, not a progress bar
            shown[0] = tenth
            print(f"compiled {done}/{total}", flush=True)

    path = asyncio.run(
        build.build(
            jobs=args.jobs,
            force=True,
            portable=True,
            say=lambda line: print(line, flush=True),
            progress=progress,
        )
    )
    print(f"built {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
