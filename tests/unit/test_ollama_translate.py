"""Ollama <-> OpenAI translation (pure): requests, options, formats, answers and stream lines."""

from __future__ import annotations

import json
import time

import pytest

from modelrunner.errors import InvalidRequest
from modelrunner.server.api.ollama import translate as tr


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


class TestRequests:
    def test_chat_maps_options_format_and_images(self) -> None:
        """Every option Ollama apps send lands on llama-server's name for it."""
        body = tr.chat_request(
            {
                "messages": [{"role": "user", "content": "hi", "images": ["iVBORw0KGgoAAA"]}],
                "options": {
                    "num_predict": 7,
                    "temperature": 0.2,
                    "top_p": 0.9,
                    "top_k": 30,
                    "stop": "END",
                    "seed": 42,
                    "repeat_penalty": 1.1,
                    "num_ctx": 4096,
                    "unknown_option": 1,
                },
                "format": "json",
            },
            "ai/x",
        )
        assert body["stream"] is True  # Ollama's default
        assert body["stream_options"] == {"include_usage": True}
        assert body["max_tokens"] == 7
        assert body["temperature"] == 0.2
        assert body["top_p"] == 0.9
        assert body["top_k"] == 30
        assert body["stop"] == ["END"]
        assert body["seed"] == 42
        assert body["repeat_penalty"] == 1.1
        assert "num_ctx" not in body
        assert "unknown_option" not in body
        assert body["response_format"] == {"type": "json_object"}
        (message,) = body["messages"]
        assert message["content"][0] == {"type": "text", "text": "hi"}
        assert message["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")

    def test_a_schema_becomes_json_schema_output(self) -> None:
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        body = tr.chat_request({"messages": [], "format": schema, "stream": False}, "m")
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "format", "schema": schema},
        }
        assert "stream_options" not in body

    def test_no_limit_num_predict_is_llama_servers_default(self) -> None:
        assert "max_tokens" not in tr.map_options({"num_predict": -1})
        assert "max_tokens" not in tr.map_options({"num_predict": -2})

    def test_tool_calls_get_json_string_arguments(self) -> None:
        message = tr.convert_message(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
            }
        )
        (call,) = message["tool_calls"]
        assert call["function"] == {"name": "f", "arguments": '{"x": 1}'}
        assert call["id"] == "call_0"

    def test_generate_is_a_chat_unless_raw(self) -> None:
        path, body = tr.generate_request({"prompt": "p", "system": "s"}, "m")
        assert path == "/v1/chat/completions"
        assert body["messages"] == [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "p"},
        ]
        path, body = tr.generate_request({"prompt": "p", "raw": True, "stream": False}, "m")
        assert path == "/v1/completions"
        assert body["prompt"] == "p"

    @pytest.mark.parametrize(
        "options",
        [
            {"temperature": "hot"},
            {"temperature": float("nan")},
            {"top_k": 1.5},
            {"seed": True},
            {"stop": [1]},
            {"num_ctx": 0},
            "all",
        ],
    )
    def test_bad_options_name_the_field(self, options: object) -> None:
        with pytest.raises(InvalidRequest, match="options"):
            tr.map_options(options)

    def test_embed_inputs(self) -> None:
        assert tr.embed_inputs({"input": "a"}, legacy=False) == ["a"]
        assert tr.embed_inputs({"input": ["a", "b"]}, legacy=False) == ["a", "b"]
        assert tr.embed_inputs({}, legacy=False) == []
        assert tr.embed_inputs({"prompt": "a"}, legacy=True) == ["a"]
        with pytest.raises(InvalidRequest):
            tr.embed_inputs({"prompt": ["a"]}, legacy=True)

    def test_dimensions_truncate_and_renormalise(self) -> None:
        cut = tr.truncate_embedding([3.0, 4.0, 5.0], 2)
        assert cut == pytest.approx([0.6, 0.8])


class TestAnswers:
    def counters(self) -> tr.Counters:
        return tr.Counters(started_ns=time.monotonic_ns())

    def test_stream_lines_end_with_done_and_counters(self) -> None:
        t = tr.StreamTranslator("chat", "ai/x", self.counters())
        data = (
            sse(
                {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
                {"choices": [{"delta": {"content": "Hel"}}]},
                {"choices": [{"delta": {"content": "lo"}}]},
                {
                    "choices": [{"delta": {}, "finish_reason": "length"}],
                    "timings": {
                        "prompt_n": 5,
                        "prompt_ms": 2.5,
                        "predicted_n": 2,
                        "predicted_ms": 4,
                    },
                },
            )
            + b"data: [DONE]\n\n"
        )
        # Cut anywhere: a partial event waits for the rest.
        lines = t.feed(data[:37]) + t.feed(data[37:]) + t.finish()
        assert [ln["message"]["content"] for ln in lines] == ["Hel", "lo", ""]
        assert [ln["done"] for ln in lines] == [False, False, True]
        last = lines[-1]
        assert last["done_reason"] == "length"
        assert last["prompt_eval_count"] == 5
        assert last["prompt_eval_duration"] == 2_500_000
        assert last["eval_count"] == 2
        assert last["eval_duration"] == 4_000_000
        assert last["total_duration"] >= 0
        assert last["created_at"].endswith("Z")

    def test_streamed_tool_calls_arrive_whole(self) -> None:
        t = tr.StreamTranslator("chat", "m", self.counters())
        t.feed(
            sse(
                {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]},
                {
                    "choices": [
                        {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}}
                    ]
                },
                {
                    "choices": [
                        {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}
                    ]
                },
                {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
            )
        )
        calls, last = t.finish()
        assert calls["message"]["tool_calls"] == [
            {"function": {"name": "f", "arguments": {"a": 1}}}
        ]
        assert last["done_reason"] == "stop"

    def test_generate_whole_answer(self) -> None:
        t = tr.StreamTranslator("generate", "m", self.counters())
        out = t.whole(
            {
                "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        )
        assert out["response"] == "hi"
        assert out["done"] is True
        assert out["done_reason"] == "stop"
        assert out["prompt_eval_count"] == 3
        assert out["eval_count"] == 1

    def test_a_stream_error_event_is_ollamas_error_line(self) -> None:
        t = tr.StreamTranslator("chat", "m", self.counters())
        assert t.feed(sse({"error": {"message": "boom", "code": 500}})) == [{"error": "boom"}]

    def test_upstream_error_message(self) -> None:
        assert tr.upstream_error(b'{"error": {"message": "bad"}}', 400) == "bad"
        assert tr.upstream_error(b"", 500) == "the runner answered 500"


def test_tag_entries_one_per_tag_with_ollamas_details() -> None:
    config = {
        "format": "gguf",
        "architecture": "gemma3",
        "parameters": "268.10M",
        "quantization": "Q4_K_M",
    }
    entries = tr.tag_entries("sha256:" + "a" * 64, ("ai/g:1", "ai/g:latest"), 0, 10, config)
    assert [e["name"] for e in entries] == ["ai/g:1", "ai/g:latest"]
    assert entries[0]["digest"] == "a" * 64
    assert entries[0]["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "gemma3",
        "families": ["gemma3"],
        "parameter_size": "268.10M",
        "quantization_level": "Q4_K_M",
    }
    assert entries[0]["modified_at"] == "1970-01-01T00:00:00Z"


def test_model_info_numbers_are_numbers() -> None:
    info = tr.model_info({"gguf": {"llama.block_count": "2", "x.f": "0.5", "general.name": "t"}})
    assert info == {"llama.block_count": 2, "x.f": 0.5, "general.name": "t"}


def test_ollama_port_is_off_by_default_and_validated() -> None:
    from modelrunner.config import Config
    from modelrunner.errors import ConfigError

    assert Config().server.ollama_port == 0
    assert Config.from_mapping({"server": {"ollama_port": 11434}}).server.ollama_port == 11434
    with pytest.raises(ConfigError, match="ollama_port"):
        Config.from_mapping({"server": {"ollama_port": 70000}})
