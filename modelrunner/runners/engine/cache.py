"""Where engine state lives: a per-user cache that outlives clones, `make clean` and test homes.

``$MODEL_RUNNER_CACHE`` (tests and CI may point it elsewhere), else ``$XDG_CACHE_HOME/modelrunner``
(``~/.cache/modelrunner``), ``~/Library/Caches/modelrunner`` on macOS.  Never under
``MODEL_RUNNER_HOME``: every home on the machine shares one native build.  Also the one place that
writes small JSON files atomically for the engine (verdicts, build stamps).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def cache_root(env: Mapping[str, str] | None = None, system: str = sys.platform) -> Path:
    """The per-user engine cache directory (not created)."""
    env = os.environ if env is None else env
    if env.get("MODEL_RUNNER_CACHE"):
        return Path(env["MODEL_RUNNER_CACHE"]).expanduser()
    if system == "darwin":
        return Path(env.get("HOME") or Path.home()) / "Library" / "Caches" / "modelrunner"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".cache"
    return base.expanduser() / "modelrunner"


def engines_dir(env: Mapping[str, str] | None = None) -> Path:
    return cache_root(env) / "engines"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when missing or unreadable (a cache is never worth an error)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write-temp plus os.replace: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
