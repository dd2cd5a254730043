"""`modelrunner requests` rows and the CLI's SSE reader: pure functions on the daemon's JSON."""

from __future__ import annotations

import json

from modelrunner.cli.commands.requests import answer_of, prompt_of, records_of, row
from modelrunner.cli.sse import read_events


def test_prompt_of_each_api_family() -> None:
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
    parts = {"messages": [{"content": [{"type": "text", "text": "look"}, {"type": "image_url"}]}]}
    assert prompt_of(json.dumps(chat)) == "hi"
    assert prompt_of(json.dumps(parts)) == "look"
    assert prompt_of(json.dumps({"prompt": "once"})) == "once"
    assert prompt_of("not json") == "not json"


def test_answer_of_success_and_error() -> None:
    chat = {"choices": [{"message": {"content": "hello"}}]}
    assert answer_of({"response": json.dumps(chat), "error": ""}) == "hello"
    assert answer_of({"response": json.dumps({"choices": [{"text": "t"}]})}) == "t"
    error = {"error": {"message": "too long", "type": "invalid_request_error"}}
    assert answer_of({"response": "", "error": json.dumps(error)}) == "error: too long"
    assert answer_of({"response": "", "error": '{"error": "gone"}'}) == "error: gone"


def test_rows_are_sorted_and_cut() -> None:
    groups = [
        {"records": [{"timestamp": 20, "model": "b", "status_code": 200, "request": "{}"}]},
        {"records": [{"timestamp": 10, "model": "a", "status_code": 0, "request": "x" * 100}]},
    ]
    first, second = records_of(groups)
    assert first["model"] == "a"
    cells = row(first)
    assert cells[2] == "…"  # still in progress
    assert len(cells[5]) == 40
    assert row(second)[2] == "200"


def test_read_events_frames() -> None:
    lines = [": keep-alive", "", "id: 3", "event: runner", 'data: {"a": 1}', "", "data: x", ""]
    assert list(read_events(lines)) == [("runner", '{"a": 1}'), ("message", "x")]
