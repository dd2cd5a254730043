"""
Anthropic's Messages request as a chat completions request, and the chat answer back as an
Anthropic message or its stream of events: the one translation for every request that goes to a
runner's chat completions instead of its own ``/v1/messages``.  Two kinds do:

- a forced tool choice (``{"type": "any"}``, ``{"type": "tool", ...}``), which llama-server's own
  converter turns into an unenforced ``"required"`` (``forced_tools`` says why): the chat body is
  held to the call there, and the call comes back here as a ``tool_use`` block with
  ``stop_reason: "tool_use"``;
- every request for a backend without ``/v1/messages`` (MLX: mlx_lm.server has chat completions
  only; ``Backend.native_apis``).

Every other request keeps llama-server's own translation.  What is carried over: ``system``,
text, image, ``tool_use``, ``tool_result`` and ``thinking`` blocks, ``tools`` and ``tool_choice``,
``max_tokens``, ``stop_sequences``, ``temperature``, ``top_p``, ``top_k`` and ``stream``; a
``document`` block, a role other than user/assistant or a bad ``tool_choice`` is a 400 (images
for a text-only model are refused by ``openai_api.check_client_errors`` on the chat body).
Pure: no I/O; the relay in ``anthropic_api`` feeds it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from modelrunner.errors import InvalidRequest

Event = tuple[str, dict[str, Any]]
CHOICES = ("auto", "any", "tool", "none")
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
SAMPLING = ("temperature", "top_p", "top_k")
ROLES = ("user", "assistant")


def chat_tool_choice(choice: Any) -> Any:
    """Anthropic's ``tool_choice`` in chat's form (None when absent); 400 for a bad one."""
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in CHOICES:
        raise InvalidRequest(
            'tool_choice: must be {"type": "auto"}, {"type": "any"}, {"type": "none"} or '
            '{"type": "tool", "name": ...}'
        )
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequest("tool_choice.name: must be the name of one of the tools")
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"any": "required"}.get(kind, kind)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else []
    return "".join(
        b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
    )


def _image(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _message(message: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: its tool results first (each a ``tool``
    message, answering the turn before), then the rest."""
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"messages.{i}.role: must be 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    reasoning = ""
    for block in content if isinstance(content, list) else []:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and (image := _image(block)) is not None:
            parts.append(image)
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {})
            function = {"name": block.get("name", ""), "arguments": arguments}
            calls.append({"id": block.get("id", ""), "type": "function", "function": function})
        elif kind == "tool_result":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id", ""),
                    "content": _text(block.get("content")),
                }
            )
        elif kind == "thinking":
            reasoning += block.get("thinking", "")
        elif kind == "document":
            raise InvalidRequest(f"messages.{i}.content: document blocks are not supported here")
        # redacted thinking and unknown blocks carry nothing a model can be given back: skipped
    if results and not (parts or calls or reasoning):
        return results
    text_only = all(p["type"] == "text" for p in parts)
    out: dict[str, Any] = {
        "role": role,
        "content": "".join(p["text"] for p in parts) if text_only else parts,
    }
    if calls:
        out["tool_calls"] = calls
    if reasoning:
        out["reasoning_content"] = reasoning
    return [*results, out]


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Anthropic's tool definitions as chat's function tools."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema") or {"type": "object"},
            },
        }
        for tool in tools or []
    ]


def chat_body(payload: dict[str, Any], tool_choice: Any) -> dict[str, Any]:
    """The chat completions request for a (checked) Anthropic Messages request."""
    messages: list[dict[str, Any]] = []
    if payload.get("system"):
        messages.append({"role": "system", "content": _text(payload["system"])})
    for i, message in enumerate(payload["messages"]):
        messages += _message(message, i)
    body: dict[str, Any] = {"model": payload["model"], "messages": messages}
    tools = chat_tools(payload.get("tools"))
    if tools:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if payload.get("max_tokens") is not None:
        body["max_tokens"] = payload["max_tokens"]
    if payload.get("stop_sequences"):
        body["stop"] = payload["stop_sequences"]
    body.update({k: payload[k] for k in SAMPLING if payload.get(k) is not None})
    if payload.get("stream") is True:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def new_id(prefix: str) -> str:
    """An id in Anthropic's form (``msg_…``, ``toolu_…``): the runner's ids are chat's."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def usage(chat_usage: Any) -> dict[str, int]:
    """Chat's ``usage`` as Anthropic's: cached prompt tokens are not counted as input."""
    chat_usage = chat_usage if isinstance(chat_usage, dict) else {}
    prompt = chat_usage.get("prompt_tokens") or 0
    details = chat_usage.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") if isinstance(details, dict) else 0) or 0
    return {
        "input_tokens": max(prompt - cached, 0),
        "cache_read_input_tokens": cached,
        "output_tokens": chat_usage.get("completion_tokens") or 0,
    }


def _input(arguments: Any) -> dict[str, Any]:
    """A call's arguments as ``tool_use.input``: an object ({} for arguments cut short)."""
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def message(completion: Any, model: str) -> dict[str, Any]:
    """A whole chat completion as an Anthropic message."""
    completion = completion if isinstance(completion, dict) else {}
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    said = choice.get("message")
    said = said if isinstance(said, dict) else {}
    content: list[dict[str, Any]] = []
    if said.get("content"):
        content.append({"type": "text", "text": said["content"]})
    for call in said.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": new_id("toolu"),
                "name": function.get("name", ""),
                "input": _input(function.get("arguments")),
            }
        )
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": usage(completion.get("usage")),
    }


class EventStream:
    """Streamed chat chunks as Anthropic's events: ``message_start``, one content block per
    text run or call (``text_delta`` / ``input_json_delta``), ``message_delta`` with the stop
    reason and usage, ``message_stop``."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.blocks = -1  # the index of the block last opened
        self.open: str | int | None = None  # "text", a call's index, or None
        self.stop_reason = "end_turn"
        self.usage: Any = None

    def start(self) -> list[Event]:
        started = message({}, self.model) | {"stop_reason": None}
        return [("message_start", {"type": "message_start", "message": started})]

    def _close(self) -> list[Event]:
        if self.open is None:
            return []
        self.open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.blocks})]

    def _begin(self, key: str | int, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self.blocks += 1
        self.open = key
        start = {"type": "content_block_start", "index": self.blocks, "content_block": block}
        return [*events, ("content_block_start", start)]

    def _delta(self, delta: dict[str, Any]) -> Event:
        data = {"type": "content_block_delta", "index": self.blocks, "delta": delta}
        return ("content_block_delta", data)

    def chunk(self, data: Any) -> list[Event]:
        """The events of one chat chunk."""
        if not isinstance(data, dict):
            return []
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        events: list[Event] = []
        for choice in (data.get("choices") or [])[:1]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            delta = delta if isinstance(delta, dict) else {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                if self.open != "text":
                    events += self._begin("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return events

    def _call(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if self.open != index:
            block = {
                "type": "tool_use",
                "id": new_id("toolu"),
                "name": function.get("name", ""),
                "input": {},
            }
            events += self._begin(index, block)
        if function.get("arguments"):
            partial = {"type": "input_json_delta", "partial_json": function["arguments"]}
            events.append(self._delta(partial))
        return events

    def finish(self) -> list[Event]:
        """The closing events, once the runner's stream ended."""
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": usage(self.usage),
        }
        stop = ("message_stop", {"type": "message_stop"})
        return [*self._close(), ("message_delta", delta), stop]
