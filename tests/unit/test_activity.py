"""The request accounting's opening: off the path to the runner, yet never missed."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from modelrunner.server.observe import activity
from modelrunner.server.observe.request_log import RequestLog
from modelrunner.server.relay.proxy import Forwarded


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def request_started(self, model: str) -> None:
        self.seen.append(("started", model))

    def request_finished(self, model: str, *, failed: bool) -> None:
        self.seen.append(("finished", model))


def state(*, request_log: bool = True) -> Any:
    return SimpleNamespace(
        config=SimpleNamespace(server=SimpleNamespace(request_log=request_log)),
        requests=RequestLog(),
        settings={},
        events=Events(),
    )


REQUEST = SimpleNamespace(method="POST", path="/v1/chat/completions", headers={})


def records(s: Any) -> list[Any]:
    return [r for group in s.requests.groups() for r in group["records"]]


async def test_opened_once_the_loop_turns() -> None:
    """Nothing is recorded while the request is on its way; the record is there a turn later,
    its duration counted from ``begin``."""
    s = state()
    before = time.monotonic()
    recorded = activity.begin(s, REQUEST, "sha256:m", "m", b"{}")
    after = time.monotonic()
    assert records(s) == []
    assert s.events.seen == []
    await asyncio.sleep(0)
    assert [r["status_code"] for r in records(s)] == [0]
    assert recorded.record is not None
    assert before <= recorded.record.started <= after
    assert s.events.seen == [("started", "m")]
    recorded.finish(Forwarded())
    assert s.events.seen == [("started", "m"), ("finished", "m")]


async def test_a_tap_or_an_end_before_the_turn_opens_it_first() -> None:
    """A chunk seen before the scheduled opening is kept; an end before it still pairs the
    live counter's start and finish, and the later scheduled opening does nothing."""
    s = state()
    recorded = activity.begin(s, REQUEST, "sha256:m", "m", b"{}")
    assert recorded.tap is not None
    recorded.tap(b"data: x\n\n")
    assert recorded.record is not None
    assert recorded.record.chunks == [b"data: x\n\n"]
    recorded.finish(Forwarded())
    await asyncio.sleep(0)
    assert s.events.seen == [("started", "m"), ("finished", "m")]
    assert len(records(s)) == 1


async def test_the_log_off_counts_without_a_record() -> None:
    s = state(request_log=False)
    recorded = activity.begin(s, REQUEST, "sha256:m", "m", b"{}")
    assert recorded.tap is None
    await asyncio.sleep(0)
    recorded.finish(Forwarded())
    assert records(s) == []
    assert s.events.seen == [("started", "m"), ("finished", "m")]
