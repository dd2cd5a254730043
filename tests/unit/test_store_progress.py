"""Progress events: Docker's line shape and its per-layer rate limit."""

from __future__ import annotations

from modelrunner.distribution import ProgressEvent, pull
from modelrunner.distribution.artifact import Descriptor
from modelrunner.distribution.model import MIB
from modelrunner.distribution.pull import Reporter

DIGEST = "sha256:" + "a" * 64


def test_event_is_dockers_progress_message() -> None:
    e = ProgressEvent(
        kind="progress",
        message="Downloaded: 0.03 MB",
        mode="pull",
        digest=DIGEST,
        layer_size=100,
        layer_current=30,
        current=30,
        total=113,
    )
    assert e.to_json() == {
        "type": "progress",
        "message": "Downloaded: 0.03 MB",
        "total": 113,
        "layer": {"id": DIGEST, "size": 100, "current": 30},
        "mode": "pull",
    }
    done = ProgressEvent(kind="success", message="Model pulled successfully")
    assert done.to_json()["layer"] == {"size": 0, "current": 0}


def test_reporter_limits_lines_per_layer(monkeypatch) -> None:
    """First read, every MiB (or 100 ms), and completion; current sums every layer."""
    monkeypatch.setattr(pull.time, "monotonic", lambda: 1000.0)  # the clock stands still
    seen: list[ProgressEvent] = []
    desc = Descriptor("application/vnd.docker.ai.gguf.v3", DIGEST, 10 * MIB, {})
    r = Reporter(seen.append, "pull", 10 * MIB + 5)
    r.update(desc, 1000)
    r.update(desc, 2000)  # < 1 MiB and < 100 ms later: dropped
    r.update(desc, 2 * MIB)
    r.update(desc, 10 * MIB)
    assert [e.layer_current for e in seen] == [1000, 2 * MIB, 10 * MIB]
    assert seen[-1].total == 10 * MIB + 5
    assert seen[-1].message == "Downloaded: 10.00 MB"


def test_a_failing_listener_does_not_break_the_transfer() -> None:
    def broken(_: ProgressEvent) -> None:
        raise RuntimeError("client went away")

    desc = Descriptor("x", DIGEST, 10, {})
    Reporter(broken, "push", 10).update(desc, 10)
