"""Logging renders JSON lines off a terminal (service logs) and readable lines on one."""

from __future__ import annotations

import io
import json

import structlog

from modelrunner import logs


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    logs.configure("info", stream=out)
    structlog.get_logger("t").info("runner.ready", model="ai/x", pid=3)
    structlog.get_logger("t").debug("hidden")
    record = json.loads(out.getvalue().strip())
    assert record["event"] == "runner.ready"
    assert record["model"] == "ai/x"
    assert record["level"] == "info"
    assert "timestamp" in record


def test_console_on_a_terminal() -> None:
    out = _Tty()
    logs.configure("debug", stream=out)
    structlog.get_logger("t").debug("pull.progress", layer="sha256:ab")
    text = out.getvalue()
    assert "pull.progress" in text
    assert not text.lstrip().startswith("{")


def test_the_access_line_is_a_json_line_with_an_iso_utc_timestamp() -> None:
    """access_line's own renderer: the fields, event, level and a structlog-style timestamp."""
    import datetime

    out = io.StringIO()
    logs.configure("info", stream=out)
    before = datetime.datetime.now(datetime.UTC)
    logs.access_line("POST", "/v1/chat/completions", 200, 1.5)
    logs.flush_lines()
    line = out.getvalue().strip()
    assert '"path": "/v1/chat/completions"' in line  # structlog's separators: what tools grep
    record = json.loads(line)
    assert record == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "duration_ms": 1.5,
        "event": "http.request",
        "level": "info",
        "timestamp": record["timestamp"],
    }
    stamp = record["timestamp"]
    assert stamp.endswith("Z")
    when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((when - before).total_seconds()) < 60


def test_access_line_is_json_dumps_line_byte_for_byte() -> None:
    """The access log's template renders what json.dumps of the line's fields (structlog's
    JSONRenderer, in its order) would, escapes included."""
    out = io.StringIO()
    logs.configure("info", stream=out)
    cases = [
        ("POST", "/engines/v1/chat/completions", 200, 3.21),
        ("GET", '/models/a"b\\c/\u00e9', 404, 0.0),
        ("DELETE", "/models/x", 500, 12345.67),
    ]
    for method, path, status, ms in cases:
        for _ in range(2):  # the second time from the cached start
            logs.access_line(method, path, status, ms)
    logs.flush_lines()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    expected = [case for case in cases for _ in range(2)]
    for line, (method, path, status, ms) in zip(lines, expected, strict=True):
        stamp = json.loads(line)["timestamp"]
        fields = {"method": method, "path": path, "status": status, "duration_ms": ms}
        assert line == json.dumps(
            {**fields, "event": "http.request", "level": "info", "timestamp": stamp}
        )
