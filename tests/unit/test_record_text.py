"""The request log's ``prompt`` and ``answer`` text, read from every API family's bodies."""

from __future__ import annotations

import json

import pytest

from modelrunner.server.observe.record_text import answer_text, prompt_text

WEATHER = {"city": "Paris"}


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]},
            "hi",
        ),
        (
            {"messages": [{"content": [{"type": "text", "text": "look"}, {"type": "image_url"}]}]},
            "look",
        ),
        ({"messages": [{"content": [{"type": "tool_result", "content": "21C"}]}]}, "21C"),
        ({"input": "hi", "instructions": "be brief"}, "hi"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "hey"}]}]}, "hey"),
        ({"input": [{"type": "function_call_output", "output": "21C"}]}, "21C"),
        ({"prompt": "once"}, "once"),
        ({"input": ["a", "b"]}, "a | b"),
        ({"query": "q", "documents": ["d"]}, "q"),
    ],
)
def test_prompt_of_each_family(body: dict, text: str) -> None:
    assert prompt_text(json.dumps(body)) == text


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"choices": [{"message": {"role": "assistant", "content": "hello"}}]}, "hello"),
        ({"choices": [{"text": "t"}]}, "t"),
        (
            {
                "choices": [
                    {
                        "message": {
                            "content": None,
                            "tool_calls": [
                                {"function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
                            ],
                        }
                    }
                ]
            },
            'weather({"city":"Paris"})',
        ),
        ({"type": "message", "content": [{"type": "text", "text": "bonjour"}]}, "bonjour"),
        (
            {
                "type": "message",
                "content": [{"type": "tool_use", "name": "weather", "input": WEATHER}],
            },
            'weather({"city": "Paris"})',
        ),
        (
            {
                "object": "response",
                "output": [
                    {"type": "reasoning", "summary": []},
                    {"type": "message", "content": [{"type": "output_text", "text": "ciao"}]},
                ],
            },
            "ciao",
        ),
        (
            {
                "output": [
                    {"type": "function_call", "name": "weather", "arguments": '{"city":"Rome"}'}
                ]
            },
            'weather({"city":"Rome"})',
        ),
        (
            {"model": "m", "message": {"role": "assistant", "content": "hallo"}, "done": True},
            "hallo",
        ),
        ({"model": "m", "response": "hej", "done": True}, "hej"),
        ({"data": [{"embedding": [0.1]}, {"embedding": [0.2]}]}, "2 embeddings"),
        ({"embeddings": [[0.1]]}, "1 embedding"),
        ({"embedding": [0.1]}, "1 embedding"),
        ({"results": [{"index": 0, "relevance_score": 1.0}]}, "1 result"),
    ],
)
def test_answer_of_each_family(body: dict, text: str) -> None:
    assert answer_text(json.dumps(body)) == text


def test_unreadable_bodies_are_kept_as_they_are() -> None:
    cut = '{"choices": [{"message": {"content": "long...[truncated 9 bytes]'
    assert answer_text(cut) == cut
    assert answer_text("plain") == "plain"
    assert prompt_text("[1, 2]") == "[1, 2]"
