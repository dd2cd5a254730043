"""A forced tool choice on the real daemon and a real runner, through the real client packages:
OpenAI chat (``"required"``, a named function), Anthropic Messages (``{"type": "any"}``,
``{"type": "tool"}``) and the Responses API (``"required"``, a named function), streamed and not.

With the real Gemma 3 270M, a base model that left to itself answers in prose: each answer is a
call of the forced tool whose arguments validate against its schema (a required string and an
enum), in each API's own shape.  With the tiny random model (fast, and as unable to choose a
call as it gets): several tools, a call cut short by ``max_tokens``, bad choices, ``auto``, and
the fast lane handing a forced chat to aiohttp on the same connection.  On a main without
forced tools every one of these came back as plain text ending in ``length``/``max_tokens``."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.http_json import call

pytestmark = pytest.mark.llama

GEMMA = "ai/gemma3"
TINY = "test/tiny"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "the city's name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
UNIT = {  # the tiny model's schema: one choice left to it, so a call ends in a few tokens
    "type": "object",
    "properties": {"unit": {"enum": ["c", "f"]}},
    "required": ["unit"],
}
LEVEL = {
    "type": "object",
    "properties": {"level": {"type": "integer"}, "loud": {"type": "boolean"}},
    "required": ["loud"],
}
QUESTION = "What is the weather in Paris today?"
MAX_TOKENS = 40  # the call is ~20 tokens; a base model left free would use all 40


def valid(arguments: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """*arguments* (JSON text or a dict) as a dict that validates against *schema*."""
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(value, schema)
    assert isinstance(value, dict)
    return value


def oa_client(d: DaemonHandle, suffix: str = "/engines/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://localhost:{d.port}{suffix}", api_key="unused", max_retries=0, timeout=120
    )


def an_client(d: DaemonHandle) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"http://localhost:{d.port}", api_key="unused", max_retries=0, timeout=120
    )


def chat_tool(name: str, schema: dict[str, Any]) -> Any:
    return {"type": "function", "function": {"name": name, "parameters": schema}}


@pytest.fixture
def gemma(daemon: DaemonHandle, gemma_gguf: Path) -> DaemonHandle:
    daemon.add_model(GEMMA, gemma_gguf)
    return daemon


@pytest.fixture
def tiny(daemon: DaemonHandle, tiny_gguf: Path) -> DaemonHandle:
    daemon.add_model(TINY, tiny_gguf)
    return daemon


# --- the real Gemma: valid arguments from a base model -------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_openai_chat_forced_call_has_valid_arguments(gemma: DaemonHandle) -> None:
    """``required`` (whole) and a named function (streamed): ``tool_calls`` whose arguments
    validate, ``finish_reason: "tool_calls"``, no text."""
    oa = oa_client(gemma)
    tools = [chat_tool("get_weather", WEATHER)]
    messages: Any = [{"role": "user", "content": QUESTION}]
    whole = oa.chat.completions.create(
        model=GEMMA, messages=messages, tools=tools, tool_choice="required", max_tokens=MAX_TOKENS
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    calls: list[Any] = list(choice.message.tool_calls or [])
    [made] = calls
    assert made.type == "function"
    assert made.function.name == "get_weather"
    assert made.id.startswith("call_")
    valid(made.function.arguments, WEATHER)

    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    stream = oa.chat.completions.create(
        model=GEMMA,
        messages=messages,
        tools=tools,
        tool_choice=named,
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    pieces, names, ids, finish, text = [], [], set(), None, ""
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            for piece in c.delta.tool_calls or []:
                assert piece.index == 0
                if piece.id:
                    ids.add(piece.id)
                if piece.function and piece.function.name:
                    names.append(piece.function.name)
                if piece.function and piece.function.arguments:
                    pieces.append(piece.function.arguments)
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert text == ""
    assert names == ["get_weather"]
    assert len(ids) == 1
    assert len(pieces) > 1  # streamed as it was generated, not in one piece at the end
    valid("".join(pieces), WEATHER)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_anthropic_forced_tool_use_has_valid_input(gemma: DaemonHandle) -> None:
    """``{"type": "tool"}`` (whole) and ``{"type": "any"}`` (streamed): a ``tool_use`` block
    whose input validates, ``stop_reason: "tool_use"``; the stream as Anthropic's events."""
    ac = an_client(gemma)
    tools: Any = [
        {"name": "get_weather", "description": "Today's weather", "input_schema": WEATHER}
    ]
    messages: Any = [{"role": "user", "content": QUESTION}]
    message = ac.messages.create(
        model=GEMMA,
        max_tokens=MAX_TOKENS,
        messages=messages,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use", message
    [block] = message.content
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.id.startswith("toolu_")
    valid(block.input, WEATHER)
    assert message.usage.output_tokens > 0

    with ac.messages.stream(
        model=GEMMA,
        max_tokens=MAX_TOKENS,
        messages=messages,
        tools=tools,
        tool_choice={"type": "any"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["tool_use"]
    partial = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(partial) > 1
    valid("".join(partial), WEATHER)
    assert final.stop_reason == "tool_use"
    [block] = final.content
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert valid(block.input, WEATHER) == json.loads("".join(partial))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_responses_forced_function_call_has_valid_arguments(gemma: DaemonHandle) -> None:
    """A named function (whole) and ``required`` (streamed): one ``function_call`` output item
    whose arguments validate, status completed; the stream's argument deltas add up to it."""
    oa = oa_client(gemma, "/v1")
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    made = oa.responses.create(
        model=GEMMA,
        input=QUESTION,
        tools=tools,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=MAX_TOKENS,
    )
    assert made.status == "completed", made
    [item] = made.output
    assert item.type == "function_call"
    assert item.name == "get_weather"
    assert item.call_id.startswith("call_")
    valid(item.arguments, WEATHER)
    assert oa.responses.retrieve(made.id).output[0].type == "function_call"  # stored as such

    stream = oa.responses.create(
        model=GEMMA,
        input=QUESTION,
        tools=tools,
        tool_choice="required",
        max_output_tokens=MAX_TOKENS,
        stream=True,
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" not in kinds
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [i.type for i in added] == ["function_call"]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == "".join(deltas)
    final: Any = events[-1].response  # type: ignore[union-attr]
    assert final.status == "completed"
    [item] = final.output
    assert item.type == "function_call"
    assert item.name == "get_weather"
    valid(item.arguments, WEATHER)


# --- the tiny model: shapes, limits, errors, the fast lane ---------------------------------


def test_one_of_several_tools_is_called_and_auto_is_unchanged(tiny: DaemonHandle) -> None:
    """``required`` with two tools: a call of one of them with valid arguments (the name and
    arguments read from the text, none of the wrapper left in them), whole and streamed;
    ``auto`` and ``none`` leave the answer as the model's text."""
    oa = oa_client(tiny)
    schemas = {"set_unit": UNIT, "set_level": LEVEL}
    tools = [chat_tool(name, schema) for name, schema in schemas.items()]
    messages: Any = [{"role": "user", "content": "hi"}]
    for _ in range(3):
        whole = oa.chat.completions.create(
            model=TINY, messages=messages, tools=tools, tool_choice="required", max_tokens=200
        )
        calls: list[Any] = list(whole.choices[0].message.tool_calls or [])
        [made] = calls
        assert whole.choices[0].finish_reason == "tool_calls"
        valid(made.function.arguments, schemas[made.function.name])

    stream = oa.chat.completions.create(
        model=TINY,
        messages=messages,
        tools=tools,
        tool_choice="required",
        max_tokens=200,
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for c in chunk.choices:
            for piece in c.delta.tool_calls or []:
                name += (piece.function and piece.function.name) or ""
                arguments += (piece.function and piece.function.arguments) or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    valid(arguments, schemas[name])

    for choice in ("auto", "none"):
        free = oa.chat.completions.create(
            model=TINY, messages=messages, tools=tools, tool_choice=choice, max_tokens=4
        )
        assert free.choices[0].finish_reason == "length"
        assert free.choices[0].message.content
        assert not free.choices[0].message.tool_calls


def test_a_call_cut_short_by_max_tokens_says_so(tiny: DaemonHandle) -> None:
    """Too few tokens for the call: each family says the answer was cut short (``length``,
    ``max_tokens``, ``incomplete``) with what was generated, never a call that looks whole."""
    oa = oa_client(tiny)
    tools = [chat_tool("set_unit", UNIT)]
    messages: Any = [{"role": "user", "content": "hi"}]
    whole = oa.chat.completions.create(
        model=TINY, messages=messages, tools=tools, tool_choice="required", max_tokens=2
    )
    assert whole.choices[0].finish_reason == "length"
    calls: list[Any] = list(whole.choices[0].message.tool_calls or [])
    [made] = calls
    assert made.function.name == "set_unit"
    with pytest.raises(ValueError, match=r"."):
        json.loads(made.function.arguments)

    an_tools: Any = [{"name": "set_unit", "input_schema": UNIT}]
    message = an_client(tiny).messages.create(
        model=TINY,
        max_tokens=2,
        messages=messages,
        tools=an_tools,
        tool_choice={"type": "tool", "name": "set_unit"},
    )
    assert message.stop_reason == "max_tokens"
    [block] = message.content
    assert block.type == "tool_use"
    assert block.input == {}  # the arguments were cut short: none are claimed

    r_tools: Any = [{"type": "function", "name": "set_unit", "parameters": UNIT}]
    made_r = oa_client(tiny, "/v1").responses.create(
        model=TINY,
        input="hi",
        tools=r_tools,
        tool_choice="required",
        max_output_tokens=2,
    )
    assert made_r.status == "incomplete"
    assert made_r.incomplete_details is not None
    assert made_r.incomplete_details.reason == "max_output_tokens"
    assert made_r.output[0].type == "function_call"
    assert made_r.output[0].status == "incomplete"


def test_a_choice_the_tools_cannot_meet_is_a_400_in_each_shape(tiny: DaemonHandle) -> None:
    """A named tool not among the tools, or ``required`` without tools: 400 in the route's
    own error shape, before any generation."""
    chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    tools = [chat_tool("set_unit", UNIT)]
    named = {"type": "function", "function": {"name": "nope"}}
    for path in ("/engines/v1/chat/completions", "/v1/chat/completions"):
        status, body = call(tiny, "POST", path, {**chat, "tools": tools, "tool_choice": named})
        assert status == 400, body
        assert "'nope' is not among the request's tools ('set_unit')" in body["error"]["message"]
        status, body = call(tiny, "POST", path, {**chat, "tool_choice": "required"})
        assert status == 400, body
        assert "needs at least one tool" in body["error"]["message"]

    status, body = call(
        tiny,
        "POST",
        "/v1/messages",
        {
            **chat,
            "tools": [{"name": "set_unit", "input_schema": UNIT}],
            "tool_choice": {"type": "tool", "name": "nope"},
        },
    )
    assert status == 400, body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "'nope'" in body["error"]["message"]

    status, body = call(
        tiny,
        "POST",
        "/v1/responses",
        {"model": TINY, "input": "hi", "tool_choice": "required"},
    )
    assert status == 400, body
    assert "needs at least one tool" in body["error"]["message"]


def _post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data


def _answers(sock: socket.socket, n: int) -> list[dict[str, Any]]:
    """*n* whole JSON answers (Content-Length framed) off *sock*."""
    buf, out = b"", list[dict[str, Any]]()
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            assert data, "closed"
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert " 200 " in lines[0] + " ", lines[0]
        length = next(
            int(v)
            for k, _, v in (x.partition(": ") for x in lines)
            if k.lower() == "content-length"
        )
        while len(buf) < length:
            buf += sock.recv(65536)
        out.append(json.loads(buf[:length]))
        buf = buf[length:]
    return out


@pytest.mark.parametrize("fast_lane", [True, False])
def test_both_lanes_hold_a_chat_to_its_forced_call(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path, fast_lane: bool
) -> None:
    """On one keep-alive connection, a plain chat, a forced one, a plain one: the forced one
    (which the fast lane hands to aiohttp, head, body and connection) is a call, the others
    text, in order, on the TCP port and on the socket, as with the fast lane off."""
    d = daemon_factory(server={"fast_lane": fast_lane})
    d.add_model(TINY, tiny_gguf)
    plain = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    forced = {**plain, "max_tokens": 30, "tools": [chat_tool("set_unit", UNIT)]}
    forced["tool_choice"] = {"type": "function", "function": {"name": "set_unit"}}
    path = "/engines/v1/chat/completions"
    for unix in (False, True):
        if unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(d.socket_path))
        else:
            sock = socket.create_connection(("127.0.0.1", d.port))
        sock.settimeout(60)
        with sock:
            sock.sendall(_post(path, plain) + _post(path, forced))
            first, second = _answers(sock, 2)
            sock.sendall(_post(path, plain))
            [third] = _answers(sock, 1)
        assert first["choices"][0]["message"]["content"]
        assert third["choices"][0]["message"]["content"]
        choice = second["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        [made] = choice["message"]["tool_calls"]
        assert made["function"]["name"] == "set_unit"
        valid(made["function"]["arguments"], UNIT)


SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {
            "who": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 6},
                    "age": {"type": "integer"},
                },
                "required": ["name"],
            },
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 1, "maxItems": 3},
        },
        "required": ["who", "tags"],
    },
    "choices": {
        "type": "object",
        "properties": {
            "v": {"anyOf": [{"type": "integer"}, {"const": "none"}]},
            "maybe": {"type": ["boolean", "null"]},
            "ratio": {"type": "number"},
        },
        "required": ["v", "maybe", "ratio"],
        "additionalProperties": False,
    },
    "refs": {
        "$defs": {
            "point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
        },
        "type": "object",
        "properties": {
            "at": {"$ref": "#/$defs/point"},
            "code": {"type": "string", "minLength": 2, "maxLength": 2},
        },
        "required": ["at", "code"],
    },
    "merged": {
        "allOf": [
            {"properties": {"a": {"type": "boolean"}}, "required": ["a"]},
            {"properties": {"b": {"enum": [1, 2]}}, "required": ["b"]},
        ]
    },
    "optional": {  # only optional members: any subset, in order, commas right
        "type": "object",
        "properties": {"p": {"enum": [1]}, "q": {"enum": [2]}, "r": {"enum": [3]}},
    },
    "map": {
        "type": "object",
        "additionalProperties": {"type": "boolean"},
        "propertyNames": {"maxLength": 3},
        "minProperties": 1,
        "maxProperties": 3,
    },
}


def test_the_grammar_holds_a_random_model_to_each_schema(tiny: DaemonHandle) -> None:
    """The tiny random model, left no choice but the grammar's, over schemas using each feature
    ``tool_grammar`` enforces: llama-server takes every grammar, and every call that ends
    validates."""
    oa = oa_client(tiny)
    messages: Any = [{"role": "user", "content": "hi"}]
    for name, schema in SCHEMAS.items():
        ended = 0
        for _ in range(3):
            whole = oa.chat.completions.create(
                model=TINY,
                messages=messages,
                tools=[chat_tool(name, schema)],
                tool_choice="required",
                max_tokens=250,
            )
            choice = whole.choices[0]
            calls: list[Any] = list(choice.message.tool_calls or [])
            [made] = calls
            if choice.finish_reason == "tool_calls":
                ended += 1
                value = json.loads(made.function.arguments)
                jsonschema.validate(value, schema)
        assert ended, f"no call of {name!r} ended within 250 tokens"
