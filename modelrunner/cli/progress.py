"""
Rendering of the daemon's pull/push/load progress lines (distribution.md §1.10).

The daemon streams one JSON object per line: ``{"type": "progress"|"success"|"warning"|"error",
"message", "total", "layer": {"id", "size", "current"}, "mode": "pull"|"push"}``.  On a terminal
every layer gets a live bar with bytes, speed and ETA, redrawn in place at most ten times a second;
otherwise each layer prints one line when it starts and one when it completes, so logs stay short.
The clock is injected; the line renderers are pure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from modelrunner.cli.format import paint, si_size
from modelrunner.errors import ModelRunnerError

REDRAW_INTERVAL_S = 0.1
BAR_WIDTH = 30

_VERBS = {
    "pull": ("Downloading", "Pull complete"),
    "push": ("Pushing", "Pushed"),
    "load": ("Loading", "Loaded"),
    "package": ("Storing", "Stored"),
}


@dataclass(slots=True)
class Layer:
    """What is known of one layer: its size, bytes so far, and where the count started."""

    id: str
    size: int
    current: int
    first_seen: float
    first_current: int  # bytes already there when first seen (a resumed download)

    @property
    def done(self) -> bool:
        return self.size > 0 and self.current >= self.size

    def speed(self, now: float) -> float | None:
        """Bytes per second since this layer was first seen; None until something moved."""
        elapsed = now - self.first_seen
        moved = self.current - self.first_current
        if elapsed <= 0 or moved <= 0:
            return None
        return moved / elapsed


def short_layer(layer_id: str) -> str:
    return layer_id.removeprefix("sha256:")[:12] or "layer"


def bar(current: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[=====>     ]``: ``=`` for what is done, ``>`` at the head, spaces for the rest."""
    if total <= 0:
        return "[" + " " * width + "]"
    filled = min(width, max(0, current * width // total))
    if filled >= width:
        return "[" + "=" * width + "]"
    head = ">" if filled > 0 else ""
    return "[" + "=" * max(0, filled - 1) + head + " " * (width - max(filled, len(head))) + "]"


def eta(seconds: float) -> str:
    """A short remaining time: ``8s``, ``1m05s``, ``2h03m``."""
    s = max(0, int(seconds + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def layer_line(
    layer: Layer, mode: str, now: float, *, color: bool = False, columns: int | None = None
) -> str:
    """One terminal line for a layer: bar, bytes, speed and ETA, or its completion.

    With *columns* the line never wraps (a wrapped line would break the redraw, which moves
    the cursor up one row per layer): the bar narrows first, then the line is cut.
    """
    working, finished = _VERBS.get(mode, _VERBS["pull"])
    name = short_layer(layer.id)
    if layer.done:
        return f"{name}: {paint(finished, '32', color)}  {si_size(layer.size)}"  # ~35 columns
    rest = [f"{si_size(layer.current)}/{si_size(layer.size)}"]
    speed = layer.speed(now)
    if speed is not None:
        rest.append(f"{si_size(speed)}/s")
        if layer.size > 0:
            rest.append(f"ETA {eta((layer.size - layer.current) / speed)}")
    head = f"{name}: {working} "
    tail = "  " + "  ".join(rest)
    width = BAR_WIDTH
    if columns is not None:
        width = min(BAR_WIDTH, columns - 1 - len(head) - len(tail) - 2)
    if width < 10:
        line = head + tail.lstrip()
        return line if columns is None else line[: columns - 1]
    return head + bar(layer.current, layer.size, width) + tail


class ProgressRenderer:
    """Feeds on progress events; draws bars on a terminal, or plain lines elsewhere."""

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool,
        color: bool = False,
        clock: Callable[[], float] = time.monotonic,
        mode: str | None = None,
        columns: int | None = None,
    ) -> None:
        self.out = out
        self.tty = tty
        self.color = color
        self.clock = clock
        self.layers: dict[str, Layer] = {}
        self.mode = mode or "pull"
        self.columns = columns  # terminal width: lines are kept shorter so they never wrap
        self._fixed_mode = mode is not None  # the verb knows better than the stream
        self._drawn = 0  # terminal lines drawn by the last redraw
        self._last_draw = float("-inf")
        self.dirty = False  # something changed that the terminal does not show yet

    def feed(self, event: dict[str, Any]) -> None:
        """Take one progress event (a ``type: progress`` line)."""
        if not self._fixed_mode:
            self.mode = str(event.get("mode") or self.mode)
        layer = event.get("layer") or {}
        layer_id = layer.get("id") if isinstance(layer, dict) else None
        if not layer_id:
            message = str(event.get("message") or "")
            if message:
                self.message(message)
            return
        now = self.clock()
        size, current = int(layer.get("size") or 0), int(layer.get("current") or 0)
        known = self.layers.get(layer_id)
        if known is None:
            known = self.layers[layer_id] = Layer(layer_id, size, current, now, current)
            if not self.tty and not known.done:
                working = _VERBS.get(self.mode, _VERBS["pull"])[0]
                self._print(f"{short_layer(layer_id)}: {working} {si_size(size)}")
            changed = True
        else:
            was_done, before = known.done, known.current
            known.size, known.current = size or known.size, max(current, known.current)
            changed = known.done != was_done
            if not changed and known.current == before:
                return  # a repeated event: nothing to draw
        if not self.tty:
            if changed and known.done:
                self._print(layer_line(known, self.mode, now))
            return
        if changed or now - self._last_draw >= REDRAW_INTERVAL_S:
            self.redraw(now)
        else:
            self.dirty = True

    def redraw(self, now: float | None = None) -> None:
        """Rewrite every layer's line in place (cursor up, clear line)."""
        now = self.clock() if now is None else now
        buf = []
        if self._drawn:
            buf.append(f"\x1b[{self._drawn}F")
        for layer in self.layers.values():
            line = layer_line(layer, self.mode, now, color=self.color, columns=self.columns)
            buf.append("\x1b[2K" + line + "\n")
        self.out.write("".join(buf))
        self.out.flush()
        self._drawn = len(self.layers)
        self._last_draw = now
        self.dirty = False

    def message(self, text: str) -> None:
        """A line of its own below the bars (a status message, the final success line)."""
        if self.tty and self.layers:
            if self.dirty:
                self.redraw()
            self._drawn = 0
            self.layers.clear()
        self._print(text)

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def follow(lines: Iterable[str], renderer: ProgressRenderer, *, warn: TextIO) -> str:
    """Render a progress stream; return the success message, raise on an error line."""
    error: str | None = None
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            # Plain text after the stream started is the daemon reporting a failure.
            error = error or line.strip()
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "progress":
            renderer.feed(event)
        elif kind == "success":
            message = str(event.get("message") or "done")
            if renderer.tty and renderer.dirty:
                renderer.redraw()
            return message
        elif kind == "warning":
            warn.write(f"warning: {event.get('message', '')}\n")
        elif kind == "error":
            error = str(event.get("message") or "the operation failed")
    if renderer.tty and renderer.dirty:
        renderer.redraw()
    raise ModelRunnerError(error or "the daemon closed the progress stream before it finished")
