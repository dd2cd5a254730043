"""A forced tool choice, pure parts: which choices force a call, the body held to it, the
grammar's shape, a completion's text read back as the call (whole and streamed, cut short), and
Anthropic's request and answer translated onto chat completions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelrunner.errors import InvalidRequest
from modelrunner.server.api import anthropic_convert as convert
from modelrunner.server.api.forced_tools import CallText, ChatCall, Forced, forced
from modelrunner.server.api.tool_grammar import call_grammar, literal

UNIT = {"type": "object", "properties": {"u": {"enum": ["c", "f"]}}, "required": ["u"]}


def tool(name: str, parameters: Any = UNIT) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def streamed(call: Forced, pieces: list[str], finish: str = "stop") -> list[dict[str, Any]]:
    chat = ChatCall(call)
    out = [chat.chunk({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    out += [chat.chunk(chunk(p)) for p in pieces]
    out.append(chat.chunk(chunk(finish=finish)))
    return out


def calls_of(chunks: list[dict[str, Any]]) -> tuple[str, str, set[str]]:
    """The name, arguments and ids the chunks' ``tool_calls`` pieces add up to."""
    name, arguments, ids = "", "", set()
    for data in chunks:
        for piece in data["choices"][0]["delta"].get("tool_calls") or []:
            name += piece["function"].get("name") or ""
            arguments += piece["function"].get("arguments") or ""
            if "id" in piece:
                ids.add(piece["id"])
    return name, arguments, ids


# Anthropic's events for an answer of one block streamed in two pieces.
ONE_BLOCK_TWO_DELTAS = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


class TestWhichChoicesForce:
    def test_required_and_a_named_function_force_auto_and_none_do_not(self) -> None:
        """``required`` forces any of the tools, a named function that one; the rest none."""
        tools = [tool("a"), tool("b")]
        assert forced(tools, "required") == Forced({"a": UNIT, "b": UNIT})
        named = {"type": "function", "function": {"name": "b"}}
        assert forced(tools, named) == Forced({"b": UNIT})
        for choice in ("auto", "none", None, {"type": "auto"}):
            assert forced(tools, choice) is None

    def test_a_choice_the_tools_cannot_meet_is_the_clients_error(self) -> None:
        """An unknown name, or ``required`` with no tools, is a 400 naming what is there."""
        named = {"type": "function", "function": {"name": "zz"}}
        with pytest.raises(InvalidRequest, match=r"'zz' is not among the request's tools \('a'\)"):
            forced([tool("a")], named)
        with pytest.raises(InvalidRequest, match="needs at least one tool"):
            forced(None, "required")

    def test_the_body_is_held_to_the_call_and_other_constraints_dropped(self) -> None:
        """The grammar replaces any other output constraint; llama-server's ``tool_choice`` is
        ``none`` (it refuses a grammar beside tools), the tools still reach the template."""
        body = {
            "model": "m",
            "tools": [tool("a")],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
            "json_schema": {},
        }
        out = forced(body["tools"], "required").constrain(body)  # type: ignore[union-attr]
        assert out["tool_choice"] == "none"
        assert out["tools"] == body["tools"]
        assert "response_format" not in out
        assert "json_schema" not in out
        assert out["grammar"].startswith("root ::= ")
        assert body["tool_choice"] == "required"  # the caller's body is left as it was


class TestGrammar:
    def test_one_tool_is_its_arguments_several_are_wrapped_by_name(self) -> None:
        """One tool: the root is its arguments object; several: one alternative per tool,
        each opening with its name, compact (no whitespace rule anywhere)."""
        one = call_grammar({"a": UNIT})
        assert one.splitlines()[0] == "root ::= t0-args"
        assert 't0-args ::= "{" "\\"u\\":" t0-args-u "}"' in one
        assert 't0-args-u ::= "\\"c\\"" | "\\"f\\""' in one
        two = call_grammar({"a": UNIT, "b": {}})
        root = two.splitlines()[0]
        assert root.count(literal('{"name":"a","arguments":')) == 1
        assert root.count(literal('{"name":"b","arguments":')) == 1
        assert " ws " not in two

    def test_optional_members_keep_their_order_and_commas(self) -> None:
        """Optional members may each be left out; a comma only between two that are written."""
        schema = {"type": "object", "properties": {"p": {"enum": [1]}, "q": {"enum": [2]}}}
        grammar = call_grammar({"a": schema})
        assert 't0-args ::= "{" t0-args-from-0 "}"' in grammar
        assert (
            't0-args-from-0 ::= "\\"p\\":" t0-args-p ( "," "\\"q\\":" t0-args-q )? '
            '| ( "\\"q\\":" t0-args-q )?'
        ) in grammar

    def test_a_recursive_ref_is_one_rule_that_refers_to_itself(self) -> None:
        """``$ref`` into ``$defs`` becomes a rule; a schema that refers to itself terminates."""
        tree = {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                }
            },
            "$ref": "#/$defs/node",
        }
        grammar = call_grammar({"a": tree})
        assert "t0-args-node ::= t0-args-node-def" in grammar
        assert "t0-args-node-def-kids ::= " in grammar
        assert "t0-args-node" in grammar.split("t0-args-node-def-kids ::= ")[1].splitlines()[0]

    def test_an_object_without_members_allowed_is_empty(self) -> None:
        grammar = call_grammar({"a": {"type": "object", "additionalProperties": False}})
        assert 't0-args ::= "{" "}"' in grammar
        assert call_grammar({"a": {}}).splitlines()[0] == "root ::= object"

    def test_a_map_is_bounded_in_members_and_key_length(self) -> None:
        schema = {
            "type": "object",
            "additionalProperties": {"type": "boolean"},
            "propertyNames": {"maxLength": 3},
            "minProperties": 1,
            "maxProperties": 3,
        }
        rules = dict(line.split(" ::= ", 1) for line in call_grammar({"a": schema}).splitlines())
        assert rules["t0-args-key"] == '"\\"" ( char ){0,3} "\\""'
        pair = 't0-args-key ":" boolean'
        assert rules["t0-args"] == f'"{{" {pair} ( "," {pair} ){{0,2}} "}}"'
        unbounded = call_grammar({"a": {"additionalProperties": {"type": "null"}}})
        assert 't0-args ::= "{" ( string ":" null ( "," string ":" null )* )? "}"' in unbounded

    def test_literals_escape_what_gbnf_would_misread(self) -> None:
        assert literal('a"b\\c\n\x01') == '"a\\"b\\\\c\\n\\x01"'


class TestCallText:
    def test_one_tools_text_is_its_arguments_as_they_come(self) -> None:
        text = CallText(Forced({"a": UNIT}))
        assert text.name == "a"
        assert text.feed('{"u"') == '{"u"'
        assert text.feed(':"c"}') == ':"c"}'
        assert text.end(complete=True) == ""
        assert text.arguments == '{"u":"c"}'

    def test_a_wrapped_call_gives_its_name_then_its_arguments_without_the_wrapper(self) -> None:
        """The name once it is whole; closing braces held back (any may be the wrapper's)
        until the text ends, then the wrapper's last one dropped."""
        text = CallText(Forced({"a": UNIT, "bb": UNIT}))
        assert text.feed('{"name":"b') == ""
        assert [text.name] == [None]  # (a list: mypy would keep the narrowing to None)
        assert text.feed('b","arguments":{"u":') == '{"u":'
        assert text.name == "bb"
        assert text.feed('"f"}') == '"f"'
        assert text.feed("}") == ""
        assert text.end(complete=True) == "}"
        assert text.arguments == '{"u":"f"}'

    def test_a_wrapped_call_cut_short_keeps_every_brace(self) -> None:
        """Cut short by max_tokens, the last brace is not the wrapper's: nothing is dropped."""
        text = CallText(Forced({"a": UNIT, "b": {}}))
        text.feed('{"name":"b","arguments":{"x":{}}')
        assert text.end(complete=False) == "}}"
        assert text.arguments == '{"x":{}}'


class TestChatCall:
    def test_a_whole_completion_becomes_tool_calls(self) -> None:
        completion = {
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": '{"u":"c"}'}}]
        }
        out = ChatCall(Forced({"a": UNIT})).whole(completion)
        choice = out["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        [made] = choice["message"]["tool_calls"]
        assert made["id"].startswith("call_")
        assert made["type"] == "function"
        assert made["function"] == {"name": "a", "arguments": '{"u":"c"}'}
        assert "index" not in made

    def test_a_whole_completion_cut_short_is_still_length(self) -> None:
        """``length`` stays: the client is told the call is incomplete, not that it is one."""
        completion = {"choices": [{"finish_reason": "length", "message": {"content": '{"u":'}}]}
        choice = ChatCall(Forced({"a": UNIT})).whole(completion)["choices"][0]
        assert choice["finish_reason"] == "length"
        assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"u":'

    def test_a_wrapped_text_cut_before_its_name_stays_text(self) -> None:
        completion = {"choices": [{"finish_reason": "length", "message": {"content": '{"na'}}]}
        message = ChatCall(Forced({"a": UNIT, "b": UNIT})).whole(completion)["choices"][0]
        assert message["message"] == {"content": '{"na'}

    def test_a_stream_opens_the_call_at_once_and_streams_its_arguments(self) -> None:
        """One tool: the first chunk names the call (one id), each piece of text follows as
        ``arguments``, no ``content`` is left, and the stop is ``tool_calls``."""
        out = streamed(Forced({"a": UNIT}), ['{"u"', ':"c"', "}"])
        assert out[0]["choices"][0]["delta"]["tool_calls"][0]["function"] == {
            "name": "a",
            "arguments": "",
        }
        assert all("content" not in c["choices"][0]["delta"] for c in out)
        assert calls_of(out)[:2] == ("a", '{"u":"c"}')
        assert len(calls_of(out)[2]) == 1
        assert out[-1]["choices"][0]["finish_reason"] == "tool_calls"

    def test_a_wrapped_stream_names_the_tool_it_chose(self) -> None:
        pieces = ['{"name":', '"b","argu', 'ments":{"u"', ':"f"}', "}"]
        out = streamed(Forced({"a": UNIT, "b": UNIT}), pieces)
        assert calls_of(out)[:2] == ("b", '{"u":"f"}')
        assert out[-1]["choices"][0]["finish_reason"] == "tool_calls"

    def test_a_stream_cut_short_before_the_name_gives_its_text_back(self) -> None:
        out = streamed(Forced({"a": UNIT, "b": UNIT}), ['{"na', 'me"'], finish="length")
        assert out[-1]["choices"][0]["delta"] == {"content": '{"name"'}
        assert out[-1]["choices"][0]["finish_reason"] == "length"

    def test_a_call_the_runner_parsed_itself_stands(self) -> None:
        already = {"function": {"name": "a", "arguments": "{}"}}
        completion = {
            "choices": [{"finish_reason": "tool_calls", "message": {"tool_calls": [already]}}]
        }
        assert ChatCall(Forced({"a": UNIT})).whole(completion)["choices"][0]["message"] == {
            "tool_calls": [already]
        }


class TestAnthropic:
    def test_tool_choices_in_chats_form(self) -> None:
        assert convert.chat_tool_choice({"type": "any"}) == "required"
        assert convert.chat_tool_choice({"type": "tool", "name": "a"}) == {
            "type": "function",
            "function": {"name": "a"},
        }
        assert convert.chat_tool_choice({"type": "auto"}) == "auto"
        assert convert.chat_tool_choice({"type": "none"}) == "none"
        assert convert.chat_tool_choice(None) is None
        for bad in ({"type": "tool"}, {"type": "x"}, "any"):
            with pytest.raises(InvalidRequest, match="tool_choice"):
                convert.chat_tool_choice(bad)

    def test_a_conversation_with_a_tool_result_in_chats_form(self) -> None:
        """System, tools, a turn's tool_use and the next turn's tool_result: chat's messages."""
        payload = {
            "model": "m",
            "max_tokens": 9,
            "system": [{"type": "text", "text": "Be brief."}],
            "tools": [{"name": "a", "input_schema": UNIT}],
            "stop_sequences": ["\n"],
            "temperature": 0,
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "a", "input": {"u": "c"}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "12 degrees"},
                        {"type": "text", "text": "and now?"},
                    ],
                },
            ],
            "stream": True,
        }
        body = convert.chat_body(payload, "required")
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "a", "arguments": json.dumps({"u": "c"})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "12 degrees"},
            {"role": "user", "content": "and now?"},
        ]
        assert body["tools"][0]["function"]["parameters"] == UNIT
        assert body["tool_choice"] == "required"
        assert (body["max_tokens"], body["stop"], body["temperature"]) == (9, ["\n"], 0)
        assert body["stream_options"] == {"include_usage": True}

    def test_a_plain_request_for_a_backend_without_messages(self) -> None:
        """No tool_choice (the MLX path): text blocks joined, thinking as reasoning_content,
        sampling carried, an empty turn kept as an empty message, no stream options."""
        payload = {
            "model": "m",
            "max_tokens": 4,
            "system": "Be brief.",
            "top_p": 0.9,
            "top_k": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}]},
                {"role": "user", "content": []},
            ],
        }
        body = convert.chat_body(payload, None)
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "ab"},
            {"role": "assistant", "content": "", "reasoning_content": "hm"},
            {"role": "user", "content": ""},
        ]
        assert (body["top_p"], body["top_k"], body["max_tokens"]) == (0.9, 5, 4)
        assert "tool_choice" not in body
        assert "stream" not in body

    def test_an_image_is_an_image_url_part(self) -> None:
        source = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
        message = {"role": "user", "content": [{"type": "image", "source": source}]}
        body = convert.chat_body({"model": "m", "messages": [message]}, None)
        assert body["messages"][0]["content"] == [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        ]

    def test_a_bad_role_or_a_document_is_a_400_naming_the_message(self) -> None:
        bad_role = {"model": "m", "messages": [{"role": "system", "content": "x"}]}
        with pytest.raises(InvalidRequest, match=r"messages\.0\.role"):
            convert.chat_body(bad_role, None)
        document = {"type": "document", "source": {"type": "text", "data": "x"}}
        turns = [{"role": "user", "content": "a"}, {"role": "user", "content": [document]}]
        with pytest.raises(InvalidRequest, match=r"messages\.1\.content: document"):
            convert.chat_body({"model": "m", "messages": turns}, None)

    def test_a_plain_text_completion_is_a_text_message(self) -> None:
        completion = {
            "choices": [{"finish_reason": "length", "message": {"content": "hi"}}],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        }
        message = convert.message(completion, "m")
        assert message["id"].startswith("msg_")
        assert message["content"] == [{"type": "text", "text": "hi"}]
        assert message["stop_reason"] == "max_tokens"
        assert message["usage"] == {
            "input_tokens": 4,
            "cache_read_input_tokens": 3,
            "output_tokens": 2,
        }

    def test_streamed_text_is_one_text_block(self) -> None:
        events = convert.EventStream("m")
        out = events.start()
        for piece in ("he", "llo"):
            out += events.chunk(chunk(piece))
        out += events.chunk(chunk(finish="stop"))
        out += events.finish()
        assert [kind for kind, _ in out] == ONE_BLOCK_TWO_DELTAS
        said = "".join(d["delta"]["text"] for k, d in out if k == "content_block_delta")
        assert said == "hello"
        assert out[-2][1]["delta"]["stop_reason"] == "end_turn"

    def test_a_completion_with_a_call_is_a_tool_use_message(self) -> None:
        completion = {
            "choices": [
                {
                    "finish_reason": "tool_calls",
                    "message": {
                        "content": None,
                        "tool_calls": [{"function": {"name": "a", "arguments": '{"u":"c"}'}}],
                    },
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5},
        }
        message = convert.message(completion, "m")
        assert message["stop_reason"] == "tool_use"
        [block] = message["content"]
        assert block["type"] == "tool_use"
        assert block["id"].startswith("toolu_")
        assert (block["name"], block["input"]) == ("a", {"u": "c"})
        assert message["usage"] == {
            "input_tokens": 7,
            "cache_read_input_tokens": 0,
            "output_tokens": 5,
        }

    def test_arguments_cut_short_are_an_empty_input_with_max_tokens(self) -> None:
        completion = {
            "choices": [
                {
                    "finish_reason": "length",
                    "message": {"tool_calls": [{"function": {"name": "a", "arguments": '{"u'}}]},
                }
            ]
        }
        message = convert.message(completion, "m")
        assert message["stop_reason"] == "max_tokens"
        assert message["content"][0]["input"] == {}

    def test_a_streamed_call_is_anthropics_event_sequence(self) -> None:
        """message_start, one tool_use block (its input in input_json_delta pieces), its stop,
        message_delta with ``tool_use`` and the usage, message_stop."""
        events = convert.EventStream("m")
        out = events.start()
        for data in streamed(Forced({"a": UNIT}), ['{"u"', ':"c"}']):
            out += events.chunk(data)
        out += events.chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
        out += events.finish()
        kinds = [kind for kind, _ in out]
        assert kinds == ONE_BLOCK_TWO_DELTAS
        start = out[1][1]["content_block"]
        assert (start["type"], start["name"], start["input"]) == ("tool_use", "a", {})
        partial = "".join(d["delta"]["partial_json"] for k, d in out if k == "content_block_delta")
        assert partial == '{"u":"c"}'
        assert out[5][1]["delta"]["stop_reason"] == "tool_use"
        assert out[5][1]["usage"]["output_tokens"] == 4
