"""Anthropic's Messages API on the real daemon and a real runner, driven by the real `anthropic`
package (plain, streamed, count_tokens, both base URLs, errors) and by Claude Code's own
request shape (beta messages, stream, system blocks with cache_control, tools)."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.beta import BetaMessageParam, BetaTextBlockParam, BetaToolParam

from tests.fixtures.daemon import DaemonHandle
from tests.integration.http_json import call

pytestmark = pytest.mark.llama

MODEL = "test/tiny"


def client(d: DaemonHandle, suffix: str = "") -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"http://localhost:{d.port}{suffix}",
        api_key="unused",
        max_retries=0,
        timeout=120,
    )


def post(d: DaemonHandle, path: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    return call(d, "POST", path, body)


@pytest.fixture
def served(daemon: DaemonHandle, tiny_gguf: Path) -> DaemonHandle:
    daemon.add_model(MODEL, tiny_gguf)
    return daemon


MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("suffix", ["", "/anthropic"])
def test_messages_plain_streamed_and_counted(served: DaemonHandle, suffix: str) -> None:
    """Both base URLs: a message, a stream of text deltas with its final message, a count."""
    ac = client(served, suffix)
    message = ac.messages.create(model=MODEL, max_tokens=4, messages=MESSAGES)
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 4

    with ac.messages.stream(model=MODEL, max_tokens=5, messages=MESSAGES) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) >= 2
    assert final.stop_reason == "max_tokens"
    assert final.content[0].type == "text"
    assert final.content[0].text == "".join(deltas)
    assert final.usage.output_tokens == 5

    count = ac.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert count.input_tokens > 1


def test_anthropic_headers_accepted_and_metrics_recorded(served: DaemonHandle) -> None:
    """x-api-key, anthropic-version and anthropic-beta pass; tokens and requests are counted."""
    ac = anthropic.Anthropic(
        base_url=f"http://localhost:{served.port}",
        api_key="sk-ant-anything",
        default_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
        max_retries=0,
    )
    ac.messages.create(model=MODEL, max_tokens=3, messages=MESSAGES)
    with ac.messages.stream(model=MODEL, max_tokens=2, messages=MESSAGES) as stream:
        stream.until_done()
    with urllib.request.urlopen(served.base_url + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert 'modelrunner_tokens_total{model="test/tiny:latest",kind="completion"} 5' in metrics
    assert 'modelrunner_tokens_total{model="test/tiny:latest",kind="prompt"}' in metrics
    assert 'route="/v1/messages",status="200"} 2' in metrics


def test_unknown_model_is_not_found_error(served: DaemonHandle) -> None:
    """A model not in the store: 404 in Anthropic's shape, anthropic.NotFoundError."""
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(served).messages.create(model="ai/absent", max_tokens=4, messages=MESSAGES)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "ai/absent" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        client(served, "/anthropic").messages.count_tokens(model="ai/absent", messages=MESSAGES)


HOSTILE: list[tuple[str, bytes | dict[str, Any]]] = [
    ("/v1/messages", b"{not json"),
    ("/v1/messages", b"[1, 2]"),
    ("/v1/messages", b""),
    ("/anthropic/v1/messages", {"model": 7, "max_tokens": 4, "messages": []}),
    ("/v1/messages", {"model": MODEL, "max_tokens": "four", "messages": MESSAGES}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 10**12, "messages": MESSAGES}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 0, "messages": MESSAGES}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": "hello"}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": [{"content": 5}]}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": MESSAGES, "stream": "yes"}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": MESSAGES, "tools": {}}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": MESSAGES, "system": 3}),
    ("/v1/messages/count_tokens", {"model": MODEL, "messages": 3}),
    ("/engines/nope/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": MESSAGES}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": [{"role": "bot"}]}),
]


def test_hostile_input_gets_anthropic_errors(served: DaemonHandle) -> None:
    """Bad JSON, wrong types, a huge max_tokens: 400 in Anthropic's shape; the daemon goes on."""
    for path, body in HOSTILE:
        status, answer = post(served, path, body)
        assert 400 <= status < 500, (path, body, status, answer)
        assert answer["type"] == "error", (path, body, answer)
        assert answer["error"]["type"] == "invalid_request_error", (path, body, answer)
        assert answer["error"]["message"]
    status, answer = post(served, "/anthropic/v1/nothing", {})
    assert status == 404
    assert answer["error"]["type"] == "not_found_error"
    message = client(served).messages.create(model=MODEL, max_tokens=2, messages=MESSAGES)
    assert message.content


def test_required_fields_are_required_as_anthropic_requires_them(served: DaemonHandle) -> None:
    """No ``max_tokens`` (plain or streamed) and ``messages: []`` are Anthropic's 400s, never a
    generation of up to 4,096 tokens; count_tokens takes no ``max_tokens`` and still counts."""
    ac = client(served)
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as caught:
            ac.post(
                "/v1/messages",
                body={"model": MODEL, "messages": MESSAGES, "stream": stream},
                cast_to=anthropic.types.Message,
            )
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith("max_tokens:")
    with pytest.raises(anthropic.BadRequestError) as caught:
        ac.messages.create(model=MODEL, max_tokens=4, messages=[])
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "invalid_request_error"
    assert "at least one message" in body["error"]["message"]
    assert ac.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens > 1
    assert ac.messages.create(model=MODEL, max_tokens=1, messages=MESSAGES).content


SYSTEM: list[BetaTextBlockParam] = [
    {
        "type": "text",
        "text": "You are Claude Code, Anthropic's official CLI for Claude.",
        "cache_control": {"type": "ephemeral"},
    },
    {
        "type": "text",
        "text": "You are an interactive CLI tool that helps users with software engineering "
        "tasks. Use the instructions below and the tools available to you to assist the user.",
        "cache_control": {"type": "ephemeral"},
    },
]
TOOLS: list[BetaToolParam] = [
    {
        "name": "Bash",
        "description": "Executes a given bash command in a persistent shell session.",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to execute"},
                "timeout": {"type": "number", "description": "Optional timeout in ms"},
                "description": {"type": "string", "description": "What the command does"},
            },
            "required": ["command"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
    {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}},
            "required": ["file_path"],
            "additionalProperties": False,
        },
    },
]
CONVERSATION: list[BetaMessageParam] = [
    {
        "role": "user",
        "content": [
            {
                "type": "text",
                "text": "<system-reminder>As you answer the user's questions, "
                "you can use the following context.</system-reminder>",
            },
            {
                "type": "text",
                "text": "list the files in this directory",
                "cache_control": {"type": "ephemeral"},
            },
        ],
    }
]


def test_claude_code_request_streams_a_well_formed_answer(served: DaemonHandle) -> None:
    """What Claude Code sends (`/v1/messages?beta=true`, stream, betas, metadata, system blocks
    with cache_control, tools, its max_tokens of 32000) gets a complete event stream; the tiny
    model's 512-token context ends it (`max_tokens`), so this is the protocol, not the prose."""
    ac = client(served)
    events = list(
        ac.beta.messages.create(
            model=MODEL,
            max_tokens=32000,
            system=SYSTEM,
            tools=TOOLS,
            messages=CONVERSATION,
            metadata={"user_id": "user_0123_account__session_4567"},
            betas=["claude-code-20250219", "interleaved-thinking-2025-05-14"],
            stream=True,
            extra_headers={"x-app": "cli", "anthropic-dangerous-direct-browser-access": "true"},
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "message_delta" in kinds
    assert "content_block_start" in kinds
    assert kinds.count("content_block_start") == kinds.count("content_block_stop")
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.delta.stop_reason in ("end_turn", "tool_use", "max_tokens")
    assert delta.usage.output_tokens > 0
