"""
The chat behind `modelrunner run`: streamed completions and the interactive loop.

``stream_answer`` sends the whole conversation to ``/engines/v1/chat/completions`` with
``stream: true`` and prints each delta as it arrives; Ctrl-C (KeyboardInterrupt) closes the
connection, which makes the daemon stop generating, and returns the partial answer.  ``Chat``
keeps the conversation and reads turns with ``input()`` (readline when available): ``\"\"\"`` opens
and closes a multi-line message, ``/bye`` leaves.  Input and output are injected for tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from modelrunner.cli.client import Client
from modelrunner.cli.format import paint
from modelrunner.errors import ModelRunnerError

CHAT_PATH = "/engines/v1/chat/completions"
HELP = """Available commands:
  /bye, /exit          leave the chat
  /clear               forget the conversation so far
  /set system TEXT     set the system message
  /?, /help            this help
Use \"\"\" to begin and end a multi-line message; Ctrl-C stops an answer; Ctrl-D leaves."""


@dataclass(slots=True)
class Answer:
    content: str = ""
    reasoning: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of an SSE stream's ``data:`` lines, up to ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def apply_event(answer: Answer, event: dict[str, Any]) -> tuple[str, str]:
    """Fold one chunk into *answer*; return the (reasoning, content) text it added."""
    error = event.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise ModelRunnerError(str(message or "the model failed while answering"))
    usage = event.get("usage")
    if isinstance(usage, dict):
        answer.usage.update(usage)
    timings = event.get("timings")
    if isinstance(timings, dict) and "prompt_n" in timings:
        answer.usage.setdefault("prompt_n", timings["prompt_n"])
    reasoning = content = ""
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        reasoning += str(delta.get("reasoning_content") or "")
        content += str(delta.get("content") or "")
    answer.reasoning += reasoning
    answer.content += content
    return reasoning, content


def request_body(
    model: str, messages: list[dict[str, str]], max_tokens: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body


def stream_answer(
    client: Client,
    model: str,
    messages: list[dict[str, str]],
    out: TextIO,
    *,
    color: bool = False,
    max_tokens: int | None = None,
) -> Answer:
    """Print the model's answer to *messages* as it streams; Ctrl-C stops it (interrupted=True)."""
    answer = Answer()
    response = client.request(
        "POST",
        CHAT_PATH,
        json_body=request_body(model, messages, max_tokens),
        headers={"Accept": "text/event-stream"},
        stream=True,
    )
    try:
        for event in sse_events(response.lines()):
            reasoning, content = apply_event(answer, event)
            if reasoning:
                out.write(paint(reasoning, "2", color))
            if content:
                out.write(content)
            if reasoning or content:
                out.flush()
    except KeyboardInterrupt:
        # Closing the connection is what tells the daemon (and llama-server) to stop.
        answer.interrupted = True
    finally:
        response.close()
    return answer


class Chat:
    """An interactive conversation with one model."""

    def __init__(
        self,
        client: Client,
        model: str,
        *,
        out: TextIO,
        err: TextIO,
        read: Callable[[str], str] = input,
        color: bool = False,
        max_tokens: int | None = None,
        debug: bool = False,
    ) -> None:
        self.client, self.model = client, model
        self.out, self.err, self.read = out, err, read
        self.color, self.max_tokens, self.debug = color, max_tokens, debug
        self.messages: list[dict[str, str]] = []

    def loop(self) -> int:
        """Read and answer turns until ``/bye`` or end of input; 0 on a normal exit."""
        self.out.write("Interactive chat mode started. Type '/bye' to exit, '/?' for help.\n")
        self.out.flush()
        while True:
            try:
                text = self.read_message()
            except EOFError:
                self.out.write("\n")
                break
            except KeyboardInterrupt:
                self.out.write("\nUse Ctrl + d or /bye to exit.\n")
                self.out.flush()
                continue
            if text is None:
                continue
            if text.strip() in ("/bye", "/exit"):
                break
            if text.startswith("/") and self.command(text.strip()):
                continue
            self.turn(text)
        self.out.write("Chat session ended.\n")
        self.out.flush()
        return 0

    def read_message(self) -> str | None:
        """One message: a line, or the lines between two ``\"\"\"``; None for an empty line."""
        line = self.read("> ")
        if not line.strip():
            return None
        if not line.lstrip().startswith('"""'):
            return line
        first = line.lstrip()[3:]
        if first.rstrip().endswith('"""'):
            return first.rstrip()[:-3]
        parts = [first] if first else []
        while True:
            more = self.read("... ")
            if more.rstrip().endswith('"""'):
                tail = more.rstrip()[:-3]
                if tail:
                    parts.append(tail)
                return "\n".join(parts)
            parts.append(more)

    def command(self, text: str) -> bool:
        """Run a ``/`` command; False when *text* is not one (it is sent as a message)."""
        word, _, rest = text.partition(" ")
        if word in ("/?", "/help"):
            self.out.write(HELP + "\n")
        elif word == "/clear":
            self.messages = [m for m in self.messages if m["role"] == "system"]
            self.out.write("Cleared the conversation.\n")
        elif word == "/set" and rest.startswith("system"):
            system = rest.removeprefix("system").strip()
            self.messages = [m for m in self.messages if m["role"] != "system"]
            if system:
                self.messages.insert(0, {"role": "system", "content": system})
            self.out.write("Set the system message.\n")
        elif word in ("/set",):
            self.out.write("Usage: /set system TEXT\n")
        else:
            self.out.write(f"Unknown command {word!r}. Type /? for help.\n")
        self.out.flush()
        return True

    def turn(self, text: str) -> None:
        """Send *text* with the conversation so far; keep both sides, even a stopped answer."""
        self.messages.append({"role": "user", "content": text})
        if self.debug:
            roles = ",".join(m["role"] for m in self.messages)
            self.err.write(f"[debug] request: {len(self.messages)} messages ({roles})\n")
        try:
            answer = stream_answer(
                self.client,
                self.model,
                self.messages,
                self.out,
                color=self.color,
                max_tokens=self.max_tokens,
            )
        except KeyboardInterrupt:
            # Stopped before the first byte of the answer (the model was still loading).
            self.messages.pop()
            self.out.write("\n" + paint("(answer stopped)", "2", self.color) + "\n")
            self.out.flush()
            return
        except ModelRunnerError as e:
            self.messages.pop()
            self.out.write("\n")
            self.err.write(f"modelrunner: {e.message}\n")
            self.err.flush()
            return
        self.out.write("\n")
        if answer.interrupted:
            self.out.write(paint("(answer stopped)", "2", self.color) + "\n")
        self.out.flush()
        if self.debug and answer.usage:
            self.err.write(f"[debug] usage: {json.dumps(answer.usage, sort_keys=True)}\n")
            self.err.flush()
        if answer.interrupted and not answer.content:
            self.messages.pop()  # nothing was answered: forget the question too
            return
        self.messages.append({"role": "assistant", "content": answer.content})
