"""``engine install``: make sure a llama-server that runs here exists, building only if needed.

Idempotent: when a candidate already passes the probe (cached), it is reported and nothing is
built.  A build happens when nothing usable exists, or when asked for (``native``).  An explicit
path that fails the probe stays an error: we never build around a user's choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from modelrunner.errors import BinaryNotFound, EngineUnusable
from modelrunner.runners.engine import build
from modelrunner.runners.engine.choose import Choice, choose


async def install(
    configured: Path | None,
    env: Mapping[str, str] | None,
    *,
    engine: str = "auto",
    native: bool = False,
    jobs: int | None = None,
    say: build.Say,
    progress: build.Progress | None = None,
) -> Choice:
    """The chosen engine after making sure one exists."""
    if native or engine == "native":
        await build.build(jobs=jobs, env=env, say=say, progress=progress)
    else:
        try:
            return await choose(configured, env, engine=engine)
        except EngineUnusable:
            raise
        except BinaryNotFound as e:
            if engine == "wheel":
                raise
            say("no llama-server that runs on this machine yet:")
            for line in e.message.splitlines()[1:-1]:
                say(line)
            await build.build(jobs=jobs, env=env, say=say, progress=progress)
    return await choose(configured, env, engine=engine)
