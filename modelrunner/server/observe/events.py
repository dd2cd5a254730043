"""
The daemon's live events (``GET /engines/events``): runner lifecycle, pull/push progress, and
request counters, as small JSON objects with a sequence number.

Every event is one flat object: ``seq`` (1, 2, … per daemon), ``time`` (unix seconds), ``type``
(``runner``, ``pull``, ``push``, ``load``, ``requests``) and the fields of its type; see
docs/architecture.md ("Live events") for each.  The supervisor reaches this bus only through the
observer callback it is given (runners never import server); routes call ``progress`` and
``request_started``/``request_finished``.  The last ``RECENT`` events are kept for a client that
connects (or reconnects with ``Last-Event-ID``) to catch up; ``requests`` counters are not
kept (each one carries the totals).  Fan-out and the drop of slow
clients belong to ``sse_hub.Hub``.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from dataclasses import dataclass
from typing import Any

from modelrunner.runners.events import RunnerEvent
from modelrunner.server.observe.sse_hub import Hub, frame

RECENT = 256
PROGRESS_TYPES = ("pull", "push", "load")


@dataclass
class Counters:
    """One model's requests since the daemon started."""

    in_flight: int = 0
    total: int = 0
    errors: int = 0


class EventBus:
    """Numbers, keeps and fans out events; never awaits, so any code on the loop may publish."""

    def __init__(self, queue_size: int = 256) -> None:
        self.hub = Hub("events", queue_size)
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self._seq = itertools.count(1)
        self.counters: dict[str, Counters] = {}
        self.last_seq = 0

    def publish(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.last_seq = next(self._seq)
        event = {"seq": self.last_seq, "time": round(time.time(), 3), "type": kind, **fields}
        if kind != "requests":  # counters are current in the last one; keep the history short
            self.recent.append(event)
        if self.hub.subscribers:
            self.hub.publish(frame(kind, event, event_id=event["seq"]))
        return event

    def since(self, seq: int) -> list[dict[str, Any]]:
        """The kept events after *seq* (all kept ones for 0)."""
        return [e for e in self.recent if e["seq"] > seq]

    # --- sources -------------------------------------------------------------------------------

    def on_runner(self, event: RunnerEvent) -> None:
        """The supervisor's observer."""
        self.publish("runner", **dataclasses.asdict(event))  # every field, in its order

    def progress(self, mode: str, model: str | None, line: dict[str, Any]) -> None:
        """One line of a pull/push/load progress stream (already rate limited by the store)."""
        layer = line.get("layer") or {}
        self.publish(
            mode if mode in PROGRESS_TYPES else "pull",
            model=model,
            status=line.get("type"),
            message=line.get("message"),
            current=layer.get("current"),
            total=line.get("total"),
        )

    def request_started(self, model: str) -> None:
        c = self.counters.get(model) or self.counters.setdefault(model, Counters())
        c.in_flight += 1
        self._counters(model, c)

    def request_finished(self, model: str, *, failed: bool) -> None:
        c = self.counters.get(model) or self.counters.setdefault(model, Counters())
        c.in_flight = max(0, c.in_flight - 1)
        c.total += 1
        c.errors += failed
        self._counters(model, c)

    def _counters(self, model: str, c: Counters) -> None:
        if not self.hub.subscribers:  # twice a request: no event to build when nobody follows
            self.last_seq = next(self._seq)
            return
        self.publish("requests", model=model, in_flight=c.in_flight, total=c.total, errors=c.errors)
