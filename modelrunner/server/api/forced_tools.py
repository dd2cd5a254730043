"""
A forced tool choice on the runner's chat completions: which tools one answer must call, the
request that holds llama-server to such a call, and the answer's text read back as that call.

llama-server does not enforce one (checked on the build we run: it ignores a named function
with a warning, and ``"required"`` under a template without a tool-call format, such as the
default model's, gives plain text).  So for ``tool_choice: "required"`` or a named function the
chat body gets ``tool_grammar``'s grammar and ``tool_choice: "none"`` (llama-server refuses a
grammar beside tools otherwise, and keeps its own tool-call parsing out of the answer; the
tools still reach the chat template).  The answer's text is then the call: ``ChatCall`` rewrites
a whole completion or its streamed chunks into ``tool_calls`` with ``finish_reason:
"tool_calls"``.  The other API families are translated onto chat completions for this
(Responses always is; Anthropic's forced choices are, in ``anthropic_convert``) and take their
call from here.  ``"auto"``, ``"none"`` and no ``tool_choice`` are not forced: their bodies go
to llama-server as they came.  Pure: no I/O.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from modelrunner.errors import InvalidRequest
from modelrunner.server.api.tool_grammar import call_grammar

WRAPPER = '{"name":'  # how a call of one of several tools starts (tool_grammar)
ARGUMENTS = ',"arguments":'
# What a forced call's body must not carry on: other output constraints would fight ours.
CONSTRAINTS = ("tool_choice", "response_format", "json_schema", "grammar")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Forced:
    """The tools one answer must call one of: name to parameters schema, in request order."""

    tools: dict[str, Any]

    @property
    def only(self) -> str | None:
        """The tool's name when just one may be called (its arguments are the whole text)."""
        return next(iter(self.tools)) if len(self.tools) == 1 else None

    def constrain(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat body for llama-server: the same, held to a call by the grammar."""
        out = {k: v for k, v in body.items() if k not in CONSTRAINTS}
        out["tool_choice"] = "none"
        out["grammar"] = call_grammar(self.tools)
        return out


def _functions(tools: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            out.setdefault(function["name"], function.get("parameters"))
    return out


def forced(tools: Any, tool_choice: Any) -> Forced | None:
    """The forced tools of a chat request (``tools`` and ``tool_choice`` in chat's form), or
    None when the model may answer in text; 400 for a choice the tools cannot meet."""
    if tool_choice == "required":
        functions = _functions(tools)
        if not functions:
            raise InvalidRequest("tool_choice: 'required' needs at least one tool in 'tools'")
        return Forced(functions)
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if tool_choice_type(tool_choice) != "function" or not isinstance(function, dict):
        return None
    name = function.get("name")
    functions = _functions(tools)
    if not isinstance(name, str) or name not in functions:
        raise InvalidRequest(
            f"tool_choice: function {name!r} is not among the request's tools "
            f"({', '.join(map(repr, functions)) or 'none given'})"
        )
    return Forced({name: functions[name]})


def tool_choice_type(choice: Any) -> Any:
    return choice.get("type") if isinstance(choice, dict) else None


class CallText:
    """A forced call's text as it streams in: the tool's name once known, then its arguments.

    The grammar writes no whitespace, so with one tool every character is the arguments', and
    with several the arguments start after ``{"name":"…","arguments":`` and end before the
    last ``}`` (held back until the text ends: any ``}`` may be the last)."""

    def __init__(self, call: Forced) -> None:
        self._wrapped = call.only is None
        self.name = call.only
        self._text = ""
        self._start = -1 if self._wrapped else 0  # where the arguments begin in the text
        self._sent = 0  # how much of the arguments has been handed out

    @property
    def text(self) -> str:
        return self._text

    @property
    def arguments(self) -> str:
        """The arguments handed out so far (all of them once ``end`` returned)."""
        return self._text[self._start : self._start + self._sent] if self._start >= 0 else ""

    def feed(self, delta: str) -> str:
        """The arguments' text that *delta* completes (maybe none yet)."""
        self._text += delta
        if self._start < 0 and not self._find_name():
            return ""
        args = self._text[self._start :]
        ready = len(args) - (len(args) - len(args.rstrip("}")) if self._wrapped else 0)
        out = args[self._sent : ready] if ready > self._sent else ""
        self._sent += len(out)
        return out

    def end(self, complete: bool) -> str:
        """The rest of the arguments; *complete*: the text ended as the grammar does (not cut
        short by ``max_tokens``), so a wrapped call's last ``}`` is the wrapper's."""
        if self._start < 0:
            return ""
        args = self._text[self._start :]
        if complete and self._wrapped and args.endswith("}"):
            args = args[:-1]
        out = args[self._sent :]
        self._sent += len(out)
        return out

    def _find_name(self) -> bool:
        text = self._text
        if not text.startswith(WRAPPER):
            return False
        try:
            name, at = _DECODER.raw_decode(text, len(WRAPPER))
        except ValueError:
            return False  # the name is still coming
        if not isinstance(name, str) or not text.startswith(ARGUMENTS, at):
            return False
        self.name = name
        self._start = at + len(ARGUMENTS)
        return True


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class _Choice:
    text: CallText
    call_id: str = field(default_factory=new_call_id)
    opened: bool = False


class ChatCall:
    """One chat completion of a forced call, its text rewritten into ``tool_calls``."""

    def __init__(self, call: Forced) -> None:
        self.call = call
        self._choices: dict[int, _Choice] = {}

    def _choice(self, index: int) -> _Choice:
        known = self._choices.get(index)
        if known is None:
            known = self._choices[index] = _Choice(CallText(self.call))
        return known

    def whole(self, completion: Any) -> Any:
        """A whole completion with each choice's text as its call."""
        for choice in _choices(completion):
            message = choice.get("message")
            if not isinstance(message, dict) or message.get("tool_calls"):
                continue  # llama-server's own parsing found a call: it stands
            content = message.get("content")
            state = _Choice(CallText(self.call))
            finish = choice.get("finish_reason")
            state.text.feed(content if isinstance(content, str) else "")
            state.text.end(complete=finish == "stop")
            if state.text.name is None:
                continue  # cut short before the name: the text is all there is
            message["content"] = None
            call = self._function(state, state.text.arguments)
            del call["index"]  # a whole message's calls have none
            message["tool_calls"] = [call]
            if finish == "stop":
                choice["finish_reason"] = "tool_calls"
        return completion

    def chunk(self, data: Any) -> Any:
        """A streamed chunk with its text as the call's pieces (``delta.tool_calls``)."""
        for choice in _choices(data):
            delta = choice.get("delta")
            if not isinstance(delta, dict) or delta.get("tool_calls"):
                continue
            state = self._choice(choice.get("index", 0))
            content = delta.pop("content", None)
            args = state.text.feed(content) if isinstance(content, str) else ""
            finish = choice.get("finish_reason")
            if finish:
                args += state.text.end(complete=finish == "stop")
            if state.text.name is None:
                if finish and state.text.text:
                    delta["content"] = state.text.text  # never became a call: as it came
                continue
            if args or not state.opened:
                delta["tool_calls"] = [self._piece(state, args)]
            if finish == "stop":
                choice["finish_reason"] = "tool_calls"
        return data

    def _piece(self, state: _Choice, args: str) -> dict[str, Any]:
        if state.opened:
            return {"index": 0, "function": {"arguments": args}}
        state.opened = True
        return self._function(state, args)

    @staticmethod
    def _function(state: _Choice, args: str) -> dict[str, Any]:
        return {
            "index": 0,
            "id": state.call_id,
            "type": "function",
            "function": {"name": state.text.name, "arguments": args},
        }


def _choices(data: Any) -> list[dict[str, Any]]:
    choices = data.get("choices") if isinstance(data, dict) else None
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
