"""The pure parts of `modelrunner run`: SSE parsing, answers, multi-line input, / commands."""

from __future__ import annotations

import io
import json

import pytest

from modelrunner.cli.chat import Answer, Chat, apply_event, request_body, sse_events
from modelrunner.cli.client import Endpoint, error_message
from modelrunner.errors import ModelRunnerError


def chunk(content=None, reasoning=None, **extra):
    delta = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    return {"choices": [{"index": 0, "delta": delta}], **extra}


class TestStream:
    def test_sse_events_stop_at_done_and_skip_other_lines(self) -> None:
        lines = [
            ": comment",
            'data: {"a": 1}',
            "",
            "event: x",
            "data: not json",
            "data: [DONE]",
            'data: {"b": 2}',
        ]
        assert list(sse_events(lines)) == [{"a": 1}]

    def test_answer_accumulates_content_reasoning_and_usage(self) -> None:
        answer = Answer()
        assert apply_event(answer, chunk(reasoning="hmm ")) == ("hmm ", "")
        assert apply_event(answer, chunk(content="hello")) == ("", "hello")
        apply_event(
            answer, {"choices": [], "usage": {"prompt_tokens": 12}, "timings": {"prompt_n": 12}}
        )
        assert answer.content == "hello"
        assert answer.reasoning == "hmm "
        assert answer.usage == {"prompt_tokens": 12, "prompt_n": 12}

    def test_an_error_chunk_raises(self) -> None:
        with pytest.raises(ModelRunnerError, match="runner crashed"):
            apply_event(Answer(), {"error": {"message": "runner crashed", "type": "x"}})

    def test_request_body_streams_the_whole_conversation(self) -> None:
        msgs = [{"role": "user", "content": "a"}]
        body = request_body("ai/x", msgs, 16)
        assert body == {
            "model": "ai/x",
            "messages": msgs,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 16,
        }
        assert "max_tokens" not in request_body("ai/x", msgs, None)


def chat_reading(*lines):
    feed = iter(lines)
    out = io.StringIO()

    def read(prompt):
        out.write(prompt)
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    return Chat(None, "ai/x", out=out, err=io.StringIO(), read=read), out  # type: ignore[arg-type]


class TestInput:
    def test_triple_quotes_make_one_multi_line_message(self) -> None:
        chat, out = chat_reading('"""first', "second", 'third"""')
        assert chat.read_message() == "first\nsecond\nthird"
        assert out.getvalue() == "> ... ... "

    def test_triple_quotes_on_lines_of_their_own(self) -> None:
        chat, _ = chat_reading('"""', "a", "", "b", '"""')
        assert chat.read_message() == "a\n\nb"

    def test_triple_quotes_on_one_line(self) -> None:
        chat, _ = chat_reading('"""just this"""')
        assert chat.read_message() == "just this"

    def test_an_empty_line_is_no_message(self) -> None:
        chat, _ = chat_reading("   ")
        assert chat.read_message() is None

    def test_bye_ends_the_loop_without_a_request(self) -> None:
        chat, out = chat_reading("/bye")
        assert chat.loop() == 0
        assert out.getvalue().endswith("Chat session ended.\n")

    def test_end_of_input_ends_the_loop(self) -> None:
        chat, _ = chat_reading()
        assert chat.loop() == 0

    def test_set_system_and_clear(self) -> None:
        chat, out = chat_reading()
        chat.command("/set system be brief")
        assert chat.messages == [{"role": "system", "content": "be brief"}]
        chat.messages.append({"role": "user", "content": "hi"})
        chat.command("/clear")
        assert chat.messages == [{"role": "system", "content": "be brief"}]
        chat.command("/nope")
        assert "Unknown command '/nope'" in out.getvalue()


class TestClientPieces:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ('{"error": "model not found"}', "model not found"),
            ('{"error": {"message": "bad model", "type": "x"}}', "bad model"),
            ("plain text\nsecond line", "plain text"),
            ("", "the daemon answered HTTP 500 with no message"),
        ],
    )
    def test_error_message_reads_every_shape(self, body, message) -> None:
        assert error_message(500, body) == message

    def test_endpoint_from_url(self) -> None:
        ep = Endpoint.from_url("http://localhost:12434")
        assert (ep.host, ep.port, ep.prefix, ep.socket_path) == ("localhost", 12434, "", None)
        assert Endpoint.from_url("127.0.0.1:9/x/").prefix == "/x"
        assert str(Endpoint.from_url("unix:///tmp/s.sock").socket_path) == "/tmp/s.sock"
        with pytest.raises(ModelRunnerError, match="not an http"):
            Endpoint.from_url("https://example.com")


class FakeResponse:
    def __init__(self, items) -> None:
        self.items = items
        self.closed = False

    def lines(self):
        for item in self.items:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.closed = True


class FakeClient:
    """Records each chat request body and answers with the next scripted SSE stream."""

    def __init__(self, *streams) -> None:
        self.streams = list(streams)
        self.bodies: list[dict] = []
        self.responses: list[FakeResponse] = []

    def request(self, method, path, *, json_body=None, **_):
        self.bodies.append(json.loads(json.dumps(json_body)))  # a copy, as sent
        item = self.streams.pop(0)
        if isinstance(item, BaseException):
            raise item
        self.responses.append(FakeResponse(item))
        return self.responses[-1]


def sse(*words, usage=None):
    lines = [f"data: {json.dumps(chunk(content=w))}" for w in words]
    if usage:
        lines.append(f"data: {json.dumps({'choices': [], 'usage': usage})}")
    return [*lines, "data: [DONE]"]


def chat_with(client, *lines):
    feed = iter(lines)

    def read(_prompt):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    out, err = io.StringIO(), io.StringIO()
    return Chat(client, "ai/x", out=out, err=err, read=read), out, err


class TestTurns:
    def test_every_request_carries_the_whole_conversation(self) -> None:
        client = FakeClient(sse("hi", " there"), sse("fine"))
        chat, out, _ = chat_with(client, "hello", "how are you?", "/bye")
        assert chat.loop() == 0
        assert [m["content"] for m in client.bodies[1]["messages"]] == [
            "hello",
            "hi there",
            "how are you?",
        ]
        assert "hi there\n" in out.getvalue()
        assert all(r.closed for r in client.responses)

    def test_ctrl_c_mid_answer_keeps_the_partial_answer_and_the_chat(self) -> None:
        client = FakeClient(
            [*sse("par", "tial")[:2], KeyboardInterrupt()], sse("ok"), [KeyboardInterrupt()]
        )
        chat, out, _ = chat_with(client, "one", "two", "three", "/bye")
        assert chat.loop() == 0
        assert out.getvalue().count("(answer stopped)") == 2
        assert [m["content"] for m in client.bodies[1]["messages"]] == ["one", "partial", "two"]
        # Stopped before any word: that question is forgotten.
        assert [m["content"] for m in chat.messages] == ["one", "partial", "two", "ok"]
        assert all(r.closed for r in client.responses)

    def test_a_failed_turn_is_reported_and_forgotten(self) -> None:
        client = FakeClient(ModelRunnerError("runner crashed"), sse("ok"))
        chat, _, err = chat_with(client, "one", "two", "/bye")
        assert chat.loop() == 0
        assert err.getvalue() == "modelrunner: runner crashed\n"
        assert [m["content"] for m in client.bodies[1]["messages"]] == ["two"]
