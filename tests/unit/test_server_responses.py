"""The Responses API's pure parts (translation, stream events, the stored-response index), its
on-disk store with a fake clock, the SSE parser, and the Anthropic/Responses error shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelrunner.errors import InvalidRequest, UpstreamTimeout
from modelrunner.server.api.responses import convert
from modelrunner.server.api.responses.index import ResponseIndex, valid_id
from modelrunner.server.api.responses.store import ResponseStore
from modelrunner.server.api.responses.stream import StreamTranslator
from modelrunner.server.middleware import error_body, is_anthropic_path, is_responses_path
from modelrunner.server.relay.sse import SSEParser, encode


class TestResponseIndex:
    def test_drops_the_oldest_beyond_the_count(self) -> None:
        """The count bound evicts in creation order."""
        index = ResponseIndex(max_count=2, max_bytes=1000, ttl_s=60)
        assert index.add("a", 1.0, 10) == []
        assert index.add("b", 2.0, 10) == []
        assert index.add("c", 3.0, 10) == ["a"]
        assert len(index) == 2
        assert index.bytes == 20

    def test_drops_the_oldest_beyond_the_bytes(self) -> None:
        """The byte bound evicts as many old records as it takes."""
        index = ResponseIndex(max_count=10, max_bytes=100, ttl_s=60)
        index.add("a", 1.0, 40)
        index.add("b", 2.0, 40)
        assert index.add("c", 3.0, 90) == ["a", "b"]
        assert not index.fits(101)

    def test_expiry_and_scan_order(self) -> None:
        """Entries added out of order (a directory scan) still expire oldest first."""
        index = ResponseIndex(max_count=10, max_bytes=1000, ttl_s=10)
        index.add("new", 20.0, 1)
        index.add("old", 5.0, 1)
        assert index.expired(now=26.0) == ["old"]
        assert not index.live("old", now=26.0)
        assert index.live("new", now=26.0)
        assert index.remove("old")
        assert not index.remove("old")

    def test_only_our_ids_are_valid(self) -> None:
        """No id that could name another path is accepted."""
        assert valid_id(convert.new_id("resp"))
        for bad in ("resp_x", "../resp_" + "0" * 32, "resp_" + "0" * 32 + "/x", "msg_" + "0" * 32):
            assert not valid_id(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_at(root: Path, clock: Clock, **bounds: Any) -> ResponseStore:
    limits = {"max_count": 10, "max_bytes": 1 << 20, "ttl_s": 100.0, **bounds}
    return ResponseStore(root, clock=clock, **limits)


class TestResponseStore:
    async def test_saves_reads_deletes_and_survives_a_reopen(self, tmp_path: Path) -> None:
        """A record is on disk under its id; a new store over the same directory finds it."""
        clock = Clock()
        store = store_at(tmp_path, clock)
        await store.open()
        rid = convert.new_id("resp")
        record = {"response": {"id": rid}, "input_items": [{"id": "msg_1"}]}
        assert await store.save(rid, record)
        assert await store.get(rid) == record
        again = store_at(tmp_path, clock)
        await again.open()
        assert await again.get(rid) == record
        assert await again.delete(rid)
        assert await again.get(rid) is None
        assert not await again.delete(rid)
        assert list(tmp_path.iterdir()) == []

    async def test_bounds_and_ttl_remove_files(self, tmp_path: Path) -> None:
        """Evicted and expired records lose their files; a half-written one is swept at open."""
        clock = Clock()
        store = store_at(tmp_path, clock, max_count=2)
        await store.open()
        ids = [convert.new_id("resp") for _ in range(3)]
        for rid in ids:
            clock.now += 1
            await store.save(rid, {"response": {"id": rid}})
        assert await store.get(ids[0]) is None
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.json" for i in ids[1:])
        clock.now += 200  # past the TTL
        assert await store.get(ids[1]) is None
        (tmp_path / ".resp_x.1.tmp").write_text("{")
        reopened = store_at(tmp_path, clock)
        await reopened.open()
        assert list(tmp_path.iterdir()) == []

    async def test_a_record_over_the_byte_bound_is_not_stored(self, tmp_path: Path) -> None:
        store = store_at(tmp_path, Clock(), max_bytes=50)
        await store.open()
        rid = convert.new_id("resp")
        assert not await store.save(rid, {"response": {"text": "x" * 100}})
        assert await store.get(rid) is None


def parse(payload: dict[str, Any]) -> convert.CreateRequest:
    return convert.parse_create({"model": "m", **payload})


class TestTranslation:
    def test_items_become_chat_messages(self) -> None:
        """Instructions and developer turns are system; a function call joins the assistant
        turn before it; its output is a tool message; earlier turns come first."""
        call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
        request = parse(
            {
                "instructions": "be brief",
                "input": [
                    {"role": "developer", "content": "rules"},
                    {"type": "function_call_output", "call_id": "c1", "output": "42"},
                ],
            }
        )
        history = [
            *convert.input_items("earlier"),
            convert.message_item("msg_1", "said"),
            *convert.input_items([call]),
        ]
        body = convert.chat_body(request, history, "m:latest")
        assert body["model"] == "m:latest"
        assert body["messages"] == [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "earlier"},
            {
                "role": "assistant",
                "content": "said",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "system", "content": "rules"},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
        assert "stream_options" not in body

    def test_tools_tool_choice_and_text_format(self) -> None:
        """Responses' flat function tools, object tool_choice and text.format in chat's form."""
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        request = parse(
            {
                "input": "x",
                "stream": True,
                "max_output_tokens": 7,
                "temperature": 0,
                "tools": [{"type": "function", "name": "f", "parameters": schema}],
                "tool_choice": {"type": "function", "name": "f"},
                "text": {"format": {"type": "json_schema", "name": "s", "schema": schema}},
            }
        )
        body = convert.chat_body(request, [], "m")
        assert body["tools"] == [
            {"type": "function", "function": {"name": "f", "parameters": schema}}
        ]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": schema},
        }
        assert body["max_tokens"] == 7
        assert body["temperature"] == 0
        assert body["stream_options"] == {"include_usage": True}

    @pytest.mark.parametrize(
        "payload",
        [
            {"input": 1},
            {"input": [{"type": "item_reference", "id": "x"}]},
            {"input": "x", "tools": [{"type": "file_search"}]},
            {"input": "x", "max_output_tokens": 2**40},
            {"input": "x", "max_output_tokens": True},
            {"input": "x", "background": True},
            {"input": "x", "text": {"format": {"type": "json_schema"}}},
            {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
        ],
    )
    def test_bad_requests_name_the_field(self, payload: dict[str, Any]) -> None:
        with pytest.raises(InvalidRequest):
            parse(payload)

    def test_a_chat_completion_becomes_a_response(self) -> None:
        """Text and tool calls become output items; `length` is incomplete; usage renamed."""
        request = parse({"input": "x", "store": False})
        base = convert.base_response("resp_1", request, "m")
        completion = {
            "choices": [
                {
                    "finish_reason": "length",
                    "message": {
                        "content": "hi",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
                    },
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
        done = convert.from_chat_completion(base, completion)
        assert [i["type"] for i in done["output"]] == ["message", "function_call"]
        assert done["output"][1]["call_id"] == "c"
        assert done["status"] == "incomplete"
        assert done["incomplete_details"] == {"reason": "max_output_tokens"}
        assert done["usage"]["total_tokens"] == 5
        assert done["store"] is False


def chunk(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


class TestStreamTranslator:
    def test_text_and_a_tool_call_stream_as_indexed_events(self) -> None:
        """Every event numbered in order; items opened, filled and closed by output_index."""
        t = StreamTranslator(convert.base_response("resp_1", parse({"input": "x"}), "m"))
        events = t.start()
        events += t.chunk(chunk(content="Hel"))
        events += t.chunk(chunk(content="lo"))
        call = {"index": 0, "id": "c9", "function": {"name": "f", "arguments": '{"a"'}}
        events += t.chunk(chunk(tool_calls=[call]))
        events += t.chunk(chunk(tool_calls=[{"index": 0, "function": {"arguments": ": 1}"}}]))
        events += t.chunk({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
        events += t.chunk({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}})
        closing, done = t.finish()
        events += [*closing, t.completed()]
        kinds = [k for k, _ in events]
        assert kinds[:3] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
        ]
        assert kinds[-1] == "response.completed"
        assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
        deltas = [d for k, d in events if k == "response.output_text.delta"]
        assert [(d["delta"], d["output_index"], d["content_index"]) for d in deltas] == [
            ("Hel", 0, 0),
            ("lo", 0, 0),
        ]
        (args_done,) = [d for k, d in events if k == "response.function_call_arguments.done"]
        assert args_done["arguments"] == '{"a": 1}'
        assert args_done["output_index"] == 1
        assert done["status"] == "completed"
        assert done["output"][0]["content"][0]["text"] == "Hello"
        assert done["output"][1]["call_id"] == "c9"
        assert done["usage"]["output_tokens"] == 6

    def test_a_broken_stream_ends_failed(self) -> None:
        t = StreamTranslator(convert.base_response("resp_1", parse({"input": "x"}), "m"))
        t.start()
        (error, failed) = t.failed("runner died", "upstream_error")
        assert error[0] == "error"
        assert failed[1]["response"]["status"] == "failed"


def test_sse_parser_takes_events_cut_anywhere() -> None:
    """Lines split across chunks, CRLF, named events, and a last event without its blank line."""
    wire = encode("a", {"x": 1}) + b"data: [DONE]\r\n\r\n" + b'data: {"y": 2}'
    parser = SSEParser()
    events = []
    for i in range(len(wire)):
        events += parser.feed(wire[i : i + 1])
    events += parser.close()
    assert [(e.name, e.json()) for e in events] == [("a", {"x": 1}), (None, None), (None, {"y": 2})]


def test_error_shapes_by_family() -> None:
    """Anthropic's paths get Anthropic's shape; Docker's /responses aliases OpenAI's."""
    for path in ("/v1/messages", "/anthropic/v1/messages/count_tokens", "/engines/x/v1/messages"):
        assert is_anthropic_path(path)
        body = error_body(path, 404, "no such model", "model_not_found")
        assert body == {
            "type": "error",
            "error": {"type": "not_found_error", "message": "no such model"},
        }
    assert error_body("/v1/messages", 503, "busy", "x")["error"]["type"] == "overloaded_error"
    for path in ("/responses", "/responses/resp_1/input_items", "/engines/responses/x"):
        assert is_responses_path(path)
        assert error_body(path, 404, "gone", "not_found")["error"]["message"] == "gone"
    for path in ("/models/ai/responses", "/v1/chat/completions", "/responsesx"):
        assert not is_responses_path(path)
    assert json.dumps(error_body("/models/x", 404, "m", "c")) == '{"error": "m"}'


def test_a_timeout_has_each_familys_timeout_shape() -> None:
    """504 everywhere: OpenAI's ``timeout`` type, Anthropic's ``api_error`` (its 503 is
    ``overloaded_error``, which a late answer is not), Ollama's and management's plain error."""
    e = UpstreamTimeout("ai/x:latest", 1.5)
    assert e.status == 504
    assert "1.5s" in e.message
    assert "server.upstream_read_timeout_s" in e.message

    def shape(path: str) -> dict[str, Any]:
        return error_body(path, e.status, e.message, e.code)

    for path in ("/engines/v1/chat/completions", "/v1/embeddings", "/v1/responses"):
        assert shape(path) == {
            "error": {"message": e.message, "type": "timeout", "code": "upstream_timeout"}
        }
    assert shape("/v1/messages") == {
        "type": "error",
        "error": {"type": "api_error", "message": e.message},
    }
    assert shape("/api/chat") == {"error": e.message}
    assert shape("/models/create") == {"error": e.message}
