"""The daemon's event loop: uvloop where it is installed (Linux, macOS), asyncio's otherwise.

uvloop's libuv loop takes less CPU per socket read/write and per timer than asyncio's selector
loop; on a 2-core machine every cycle the daemon spends relaying is taken from llama-server, so
the proxy's hot path runs on it (docs/benchmarks.md, Proxy).  ``MODEL_RUNNER_EVENT_LOOP=asyncio``
keeps asyncio's loop (a comparison, or a platform where uvloop misbehaves).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

ENV = "MODEL_RUNNER_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's default) when absent or opted out."""
    if os.environ.get(ENV, "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
