"""
Anthropic's Messages API onto OpenAI chat completions, for a backend that does not speak it.

llama-server answers ``/v1/messages`` itself, so its models get the body as it came
(``anthropic_api``); mlx_lm.server has chat completions only, so for an MLX model the request is
translated here (system, text and tool blocks, tools and tool_choice, sampling, stop sequences)
and the answer back: a whole ``message`` object, or the stream's ``message_start``,
``content_block_*``, ``message_delta`` and ``message_stop`` events, with Anthropic's stop reasons
and usage.  Images are refused with a 400 (the MLX backend runs text models).  Plain data, no I/O:
the relay in ``anthropic_api`` feeds it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from modelrunner.errors import InvalidRequest

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _text(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    return "".join(
        b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
    )


def _tool_result_text(content: Any) -> str:
    return content if isinstance(content, str) else _text(content or [])


def _message(message: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """One Anthropic message as one or more chat messages (tool results become ``tool`` ones)."""
    role = message.get("role")
    content = message.get("content")
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"messages.{i}.role: must be 'user' or 'assistant'")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text", "")))
        elif kind == "tool_use" and role == "assistant":
            calls.append(
                {
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name") or ""),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
        elif kind == "tool_result" and role == "user":
            result = _tool_result_text(block.get("content"))
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id") or "")})
            out[-1]["content"] = result
        elif kind in ("image", "document"):
            raise InvalidRequest(
                f"messages.{i}.content: this model's backend takes text only (no {kind} blocks)"
            )
        # thinking and unknown blocks carry nothing the model can be given back: skipped
    if text or calls or not out:
        chat: dict[str, Any] = {"role": role, "content": "".join(text)}
        if calls:
            chat["tool_calls"] = calls
        out.append(chat)
    return out


def _tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": str(choice.get("name", ""))}}
    return "none" if kind == "none" else "auto"


def chat_body(payload: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request for a checked Anthropic request (``check_request``)."""
    messages: list[dict[str, Any]] = []
    system = payload.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system)})
    for i, message in enumerate(payload.get("messages") or []):
        messages.extend(_message(message, i))
    body: dict[str, Any] = {"model": payload["model"], "messages": messages}
    for ours, theirs in (("max_tokens", "max_tokens"), ("temperature", "temperature")):
        if payload.get(ours) is not None:
            body[theirs] = payload[ours]
    for key in ("top_p", "top_k"):
        if payload.get(key) is not None:
            body[key] = payload[key]
    if payload.get("stop_sequences"):
        body["stop"] = list(payload["stop_sequences"])
    tools = payload.get("tools")
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {"type": "object"},
                },
            }
            for t in tools
        ]
        if payload.get("tool_choice") is not None:
            body["tool_choice"] = _tool_choice(payload["tool_choice"])
    if payload.get("stream") is True:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def _arguments(text: Any) -> Any:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def new_id() -> str:
    return "msg_" + secrets.token_hex(12)


def whole(answer: dict[str, Any], model: str) -> dict[str, Any]:
    """A chat completion as Anthropic's ``message`` object."""
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    raw = choice.get("message")
    message: dict[str, Any] = raw if isinstance(raw, dict) else {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": str(message["content"])})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or "toolu_" + secrets.token_hex(8)),
                "name": str(function.get("name", "")),
                "input": _arguments(function.get("arguments")),
            }
        )
    return {
        "id": new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": _usage(answer.get("usage")),
    }


Event = tuple[str, dict[str, Any]]


class StreamTranslator:
    """Chat completion chunks in, Anthropic stream events out (``feed`` per chunk object)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._started = False
        self._block: str | None = None  # "text" or "tool_use": the open content block
        self._index = -1
        self._tool_calls: dict[int, int] = {}  # chat tool call index -> our block index
        self._stop = "end_turn"
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}

    def _start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": new_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _close_block(self) -> list[Event]:
        if self._block is None:
            return []
        self._block = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[Event]:
        events = self._close_block()
        self._index += 1
        self._block = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return [*events, ("content_block_start", start)]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        events = self._start()
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self._block != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                text = {"type": "text_delta", "text": str(delta["content"])}
                events.append(self._delta(text))
            for call in delta.get("tool_calls") or []:
                events += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._stop = STOP_REASONS.get(str(choice["finish_reason"]), "end_turn")
        return events

    def _delta(self, delta: dict[str, Any]) -> Event:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": self._index, "delta": delta},
        )

    def _tool_delta(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        if position not in self._tool_calls:
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or "toolu_" + secrets.token_hex(8)),
                "name": str(function.get("name", "")),
                "input": {},
            }
            events += self._open("tool_use", block)
            self._tool_calls[position] = self._index
        if function.get("arguments"):
            partial = {"type": "input_json_delta", "partial_json": str(function["arguments"])}
            events.append(self._delta(partial))
        return events

    def finish(self) -> list[Event]:
        events = [*self._start(), *self._close_block()]
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop, "stop_sequence": None},
            "usage": dict(self.usage),  # input too: only the end of a chat stream knows it
        }
        return [*events, ("message_delta", delta), ("message_stop", {"type": "message_stop"})]
