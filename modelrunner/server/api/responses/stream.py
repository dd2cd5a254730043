"""
Streamed chat-completion chunks turned into the Responses API's events: a pure state machine.

``start`` gives ``response.created`` and ``response.in_progress``; each chunk gives
``response.output_item.added`` / ``content_part.added`` when an item opens and then
``output_text.delta``, ``reasoning_text.delta`` or ``function_call_arguments.delta``; ``finish``
closes every open item (``*.done``) and returns the finished response, whose
``response.completed`` the caller sends once it is stored (also when ``max_output_tokens`` cut
it short: then its ``status`` is ``incomplete``).  Every
event has the ``sequence_number``, ``output_index`` and ``content_index`` the ``openai``
package's ``responses.stream()`` builds its snapshot from.  No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelrunner.server.api.responses import convert

Event = tuple[str, dict[str, Any]]


@dataclass
class _Open:
    """One output item being streamed."""

    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)


class StreamTranslator:
    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.seq = 0
        self.items: list[_Open] = []
        self._message: _Open | None = None
        self._reasoning: _Open | None = None
        self._calls: dict[int, _Open] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **data: Any) -> Event:
        event = (kind, {"type": kind, "sequence_number": self.seq, **data})
        self.seq += 1
        return event

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def _open(self, item: dict[str, Any]) -> tuple[_Open, Event]:
        opened = _Open(len(self.items), item)
        self.items.append(opened)
        added = dict(item, status="in_progress")
        event = self._event("response.output_item.added", output_index=opened.index, item=added)
        return opened, event

    def _text(self, delta: str) -> list[Event]:
        events = []
        if self._message is None:
            self._message, added = self._open(convert.message_item(convert.new_id("msg"), ""))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events += [
                added,
                self._event(
                    "response.content_part.added",
                    item_id=self._message.item["id"],
                    output_index=self._message.index,
                    content_index=0,
                    part=part,
                ),
            ]
        self._message.text.append(delta)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self._message.item["id"],
                output_index=self._message.index,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return events

    def _reason(self, delta: str) -> list[Event]:
        events = []
        if self._reasoning is None:
            self._reasoning, added = self._open(convert.reasoning_item(convert.new_id("rs"), ""))
            events.append(added)
        self._reasoning.text.append(delta)
        events.append(
            self._event(
                "response.reasoning_text.delta",
                item_id=self._reasoning.item["id"],
                output_index=self._reasoning.index,
                content_index=0,
                delta=delta,
            )
        )
        return events

    def _call(self, call: dict[str, Any]) -> list[Event]:
        events = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        opened = self._calls.get(index)
        if opened is None:
            item = convert.function_call_item(
                convert.new_id("fc"),
                call.get("id") or convert.new_id("call"),
                function.get("name") or "",
                "",
            )
            opened, added = self._open(item)
            self._calls[index] = opened
            events.append(added)
        elif function.get("name"):
            opened.item["name"] += function["name"]
        arguments = function.get("arguments")
        if arguments:
            opened.text.append(arguments)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=opened.item["id"],
                    output_index=opened.index,
                    delta=arguments,
                )
            )
        return events

    def chunk(self, data: Any) -> list[Event]:
        """Events for one chat-completion chunk."""
        if not isinstance(data, dict):
            return []
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        events: list[Event] = []
        for choice in data.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                events += self._reason(delta["reasoning_content"])
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _close(self, opened: _Open) -> list[Event]:
        text = "".join(opened.text)
        item = opened.item
        idx = opened.index
        events = []
        if item["type"] == "message":
            item = convert.message_item(item["id"], text)
            part = item["content"][0]
            events += [
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=idx,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=idx,
                    content_index=0,
                    part=part,
                ),
            ]
        elif item["type"] == "reasoning":
            item = convert.reasoning_item(item["id"], text)
            events.append(
                self._event(
                    "response.reasoning_text.done",
                    item_id=item["id"],
                    output_index=idx,
                    content_index=0,
                    text=text,
                )
            )
        else:
            item = convert.function_call_item(item["id"], item["call_id"], item["name"], text)
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=idx,
                    arguments=text,
                )
            )
        opened.item = item
        events.append(self._event("response.output_item.done", output_index=idx, item=item))
        return events

    def finish(self) -> tuple[list[Event], dict[str, Any]]:
        """The closing events and the finished response (its final event: ``completed``)."""
        events: list[Event] = []
        for opened in self.items:
            events += self._close(opened)
        output = [opened.item for opened in self.items]
        self.response = convert.finish(self.response, output, self.finish_reason, self.usage)
        return events, self.response

    def completed(self) -> Event:
        # Always ``response.completed`` (as Docker's): the openai package's
        # ``get_final_response()`` waits for no other; ``status`` says whether it is incomplete.
        return self._event("response.completed", response=self.response)

    def failed(self, message: str, code: str) -> list[Event]:
        """An error event and ``response.failed``, for a stream the runner broke off."""
        failed = dict(self.response, status="failed", error={"code": code, "message": message})
        return [
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=failed),
        ]
