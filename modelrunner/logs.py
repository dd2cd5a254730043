"""
structlog setup: a console renderer on a terminal, JSON lines otherwise (service logs).

Nothing happens at import time; ``configure()`` is called once by the CLI entry point.
"""

from __future__ import annotations

import asyncio
import atexit
import json as _json
import logging
import sys
import time
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40}
_INFO = 20
_dumps = _json.dumps
_FAST: dict[str, Any] = {}  # what configure() chose, for access_line()
_PENDING: list[str] = []
LINES_FLUSH_S = 0.1
LINES_MAX = 256


def configure(
    level: str = "info", *, stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Configure structlog for the process; *json* defaults to "stderr is not a terminal"."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if json:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    flush_lines()
    if not _FAST:
        atexit.register(flush_lines)
    _FAST.update(stream=stream, json=json, level=_LEVELS.get(level.lower(), 20))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), 20)),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (aiohttp) stay quiet unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=stream)


_ACCESS_STARTS: dict[tuple[str, str], str] = {}
ACCESS_STARTS_MAX = 256


def access_line(method: str, path: str, status: int, duration_ms: float) -> None:
    """``log.info("http.request", method=, path=, status=, duration_ms=)``, once per request.

    Writes the JSON line the processors above would (fields, event, level, timestamp), byte for
    byte, from a start rendered once per method and path and a timestamp whose date and time
    are formatted once a second: structlog's chain cost ~35 µs a line, a tenth of the fast
    lane's budget per request, and ``json.dumps`` of the whole line was most of what remained.
    (Not orjson: its compact separators would change the lines that tools and tests grep.)  On
    a terminal (or before ``configure``) it is structlog's."""
    if not _FAST.get("json"):
        structlog.get_logger("modelrunner").info(
            "http.request", method=method, path=path, status=status, duration_ms=duration_ms
        )
        return
    if _FAST["level"] > _INFO:
        return
    start = _ACCESS_STARTS.get((method, path))
    if start is None:
        if len(_ACCESS_STARTS) >= ACCESS_STARTS_MAX:
            _ACCESS_STARTS.clear()
        start = f'{{"method": {_dumps(method)}, "path": {_dumps(path)}, "status": '
        _ACCESS_STARTS[method, path] = start
    _emit(
        f'{start}{status:d}, "duration_ms": {float(duration_ms)!r}, "event": "http.request", '
        f'"level": "info", "timestamp": "{timestamp()}"}}\n'
    )


def _emit(line: str) -> None:
    _PENDING.append(line)
    if len(_PENDING) == 1:
        # Written in batches LINES_FLUSH_S apart: a write (two, with the daemon's log file)
        # per request was a tenth of the fast lane's CPU.  Each line keeps its own timestamp.
        try:
            asyncio.get_running_loop().call_later(LINES_FLUSH_S, flush_lines)
        except RuntimeError:
            flush_lines()
    elif len(_PENDING) >= LINES_MAX:
        flush_lines()


_second: tuple[int, str] = (0, "")


def timestamp() -> str:
    """Now, as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it (always with
    microseconds, ``Z`` for UTC)."""
    global _second
    now = time.time()
    whole = int(now)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1e6):06d}Z"


def flush_lines() -> None:
    """Write the batched ``access_line`` lines now (and at exit)."""
    if _PENDING:
        text = "".join(_PENDING)
        _PENDING.clear()
        _FAST["stream"].write(text)
