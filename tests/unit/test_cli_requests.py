"""`modelrunner requests` rows and the CLI's SSE reader: pure functions on the daemon's JSON."""

from __future__ import annotations

import json

from modelrunner.cli.commands.requests import answer_of, prompt_of, records_of, row
from modelrunner.cli.sse import read_events


def test_prompt_and_answer_are_the_daemons_text_fields() -> None:
    record = {"request": "{}", "response": "{}", "prompt": "hi", "answer": "hello", "error": ""}
    assert prompt_of(record) == "hi"
    assert answer_of(record) == "hello"


def test_without_the_text_fields_the_bodies_are_read() -> None:
    """A daemon that keeps only Docker's fields (Docker's own): the bodies are read instead."""
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
    message = {"type": "message", "content": [{"type": "text", "text": "hello"}]}
    record = {"request": json.dumps(chat), "response": json.dumps(message), "error": ""}
    assert prompt_of(record) == "hi"
    assert answer_of(record) == "hello"
    assert prompt_of({"request": "not json"}) == "not json"


def test_answer_of_an_error() -> None:
    error = {"error": {"message": "too long", "type": "invalid_request_error"}}
    assert answer_of({"response": "", "error": json.dumps(error)}) == "error: too long"
    assert answer_of({"response": "", "error": '{"error": "gone"}', "answer": ""}) == "error: gone"


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
