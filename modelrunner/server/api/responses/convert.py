"""
OpenAI's Responses API translated onto chat completions, and the answers back: pure functions.

Why translate instead of passing the request to llama-server's own ``/v1/responses``:
llama-server's is stateless (it refuses ``previous_response_id``), drops ``text.format`` (so
structured output silently stops being structured), passes ``tool_choice`` on in the Responses
form its chat code does not read, and streams events without ``output_index``,
``content_index`` or ``sequence_number``, which the ``openai`` package's ``responses.stream()``
needs to build its snapshot.  Chat completions is the runner's best-tested surface: tools,
``response_format`` grammars and usage all work there, and the daemon owns the ids it stores.

Here: validating a create request (``parse_create``), normalising its input into stored input
items, the chat body (``chat_body``) built from earlier turns plus this one, and the
``response`` objects.  No I/O; ``responses_stream`` does the streamed events.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from modelrunner.errors import InvalidRequest

MAX_OUTPUT_TOKENS = 2**31 - 1  # llama-server's n_predict is an int32
# Fields of OpenAI's API that need OpenAI's servers; refused rather than silently ignored.
UNSUPPORTED = {
    "background": "background responses are not supported; leave 'background' out",
    "conversation": "'conversation' is not supported; use 'previous_response_id'",
    "prompt": "stored prompt templates ('prompt') are not supported",
}
CHAT_SAMPLING = ("temperature", "top_p", "parallel_tool_calls", "seed")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _bad(field: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: must be {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class CreateRequest:
    payload: dict[str, Any]
    model: str
    input_items: list[dict[str, Any]]
    stream: bool
    store: bool
    previous_response_id: str | None


def parse_create(payload: dict[str, Any]) -> CreateRequest:
    """A validated ``POST /v1/responses`` body (400 naming the field otherwise)."""
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model", "the name of a model in the store (a non-empty string)")
    for field, message in UNSUPPORTED.items():
        if payload.get(field) not in (None, False):
            raise InvalidRequest(message)
    for field in ("stream", "store", "parallel_tool_calls"):
        if field in payload and not isinstance(payload[field], bool | None):
            raise _bad(field, "true or false")
    for field in ("instructions", "previous_response_id", "user"):
        if payload.get(field) is not None and not isinstance(payload[field], str):
            raise _bad(field, "a string")
    for field in ("temperature", "top_p"):
        if payload.get(field) is not None and not _is_number(payload[field]):
            raise _bad(field, "a number")
    limit = payload.get("max_output_tokens")
    if limit is not None and not (_is_int(limit) and 1 <= limit <= MAX_OUTPUT_TOKENS):
        raise _bad("max_output_tokens", f"an integer from 1 to {MAX_OUTPUT_TOKENS}")
    metadata = payload.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("metadata", "an object of string values")
    chat_tools(payload.get("tools"))
    chat_tool_choice(payload.get("tool_choice"))
    response_format(payload.get("text"))
    if "input" not in payload or payload["input"] is None:
        raise _bad("input", "a string or an array of input items")
    return CreateRequest(
        payload=payload,
        model=model,
        input_items=input_items(payload["input"]),
        stream=payload.get("stream") is True,
        store=payload.get("store") is not False,
        previous_response_id=payload.get("previous_response_id") or None,
    )


# --- input items ---------------------------------------------------------------------------

ROLES = ("user", "assistant", "system", "developer")


def _parts(content: Any, role: str, where: str) -> list[dict[str, Any]]:
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return [{"type": text_type, "text": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content", "a string or an array of content parts")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": text_type, "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "refusal", "refusal": part["refusal"]})
        elif kind == "input_image" and role != "assistant":
            if not isinstance(part.get("image_url"), str):
                raise _bad(f"{where}.content.{j}.image_url", "a URL or data: URL string")
            parts.append({"type": "input_image", "image_url": part["image_url"]})
        else:
            raise _bad(
                f"{where}.content.{j}",
                'a text part ({"type": "input_text", "text": ...}) or an input_image part',
            )
    return parts


def _item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(where, "an input item object")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", "one of " + ", ".join(ROLES))
        out = {"type": "message", "role": role, "content": _parts(item.get("content"), role, where)}
    elif kind == "function_call":
        for field in ("call_id", "name", "arguments"):
            if not isinstance(item.get(field), str):
                raise _bad(f"{where}.{field}", "a string")
        out = {k: item[k] for k in ("type", "call_id", "name", "arguments")}
        out["status"] = "completed"
    elif kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in _parts(output, "user", where))
        if not isinstance(item.get("call_id"), str) or not isinstance(output, str):
            raise _bad(where, "a function_call_output with a string call_id and output")
        out = {"type": kind, "call_id": item["call_id"], "output": output}
    elif kind == "reasoning":
        out = {k: v for k, v in item.items() if k != "id"}
    else:
        raise _bad(f"{where}.type", "message, function_call, function_call_output or reasoning")
    given = item.get("id")
    prefix = {"message": "msg", "function_call": "fc", "reasoning": "rs"}.get(kind, "fco")
    out["id"] = given if isinstance(given, str) and given else new_id(prefix)
    return out


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's ``input`` as the items ``GET .../input_items`` lists."""
    if isinstance(value, str):
        return [_item({"role": "user", "content": value}, "input")]
    if not isinstance(value, list):
        raise _bad("input", "a string or an array of input items")
    return [_item(item, f"input.{i}") for i, item in enumerate(value)]


# --- the chat completions request ----------------------------------------------------------


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("tools", "an array of function tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise InvalidRequest(
                f"tools.{i}: only function tools run locally, not {kind!r} "
                '({"type": "function", "name": ..., "parameters": {...}})'
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"tools.{i}.name", "a non-empty string")
        if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
            raise _bad(f"tools.{i}.parameters", "a JSON schema object")
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        if tool.get("strict") is not None:
            function["strict"] = bool(tool["strict"])
        out.append({"type": "function", "function": function})
    return out or None


def chat_tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("name"), str)
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("tool_choice", 'auto, none, required or {"type": "function", "name": ...}')


def response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (llama-server turns it into a grammar)."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text, dict) or (fmt is not None and not isinstance(fmt, dict)):
        raise _bad("text", 'an object such as {"format": {"type": "json_schema", ...}}')
    kind = fmt.get("type") if fmt else "text"
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and fmt is not None:
        if not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format.schema", "a JSON schema object")
        schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = bool(fmt["strict"])
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("text.format.type", "text, json_object or json_schema")


def _chat_content(parts: list[dict[str, Any]]) -> Any:
    if all(p["type"] in ("input_text", "output_text") for p in parts):
        return "".join(p["text"] for p in parts)
    out = []
    for p in parts:
        if p["type"] == "input_image":
            out.append({"type": "image_url", "image_url": {"url": p["image_url"]}})
        else:
            out.append({"type": "text", "text": p.get("text", p.get("refusal", ""))})
    return out


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored and new items as chat messages; a function call joins the assistant turn."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _chat_content(item["content"])})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    return messages


def chat_body(request: CreateRequest, history: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """The chat completions request: instructions, earlier turns' items, this input."""
    payload = request.payload
    messages = chat_messages(history + request.input_items)
    if payload.get("instructions"):
        messages.insert(0, {"role": "system", "content": payload["instructions"]})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    for field in CHAT_SAMPLING:
        if payload.get(field) is not None:
            body[field] = payload[field]
    if payload.get("max_output_tokens") is not None:
        body["max_tokens"] = payload["max_output_tokens"]
    optional = {
        "tools": chat_tools(payload.get("tools")),
        "tool_choice": chat_tool_choice(payload.get("tool_choice")),
        "response_format": response_format(payload.get("text")),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


# --- response objects ----------------------------------------------------------------------


def base_response(response_id: str, request: CreateRequest, model: str) -> dict[str, Any]:
    """The response as it starts (``in_progress``, no output), echoing the request's settings."""
    payload = request.payload
    text = payload.get("text") if isinstance(payload.get("text"), dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "metadata": payload.get("metadata") or {},
        "model": model,
        "output": [],
        "parallel_tool_calls": payload.get("parallel_tool_calls") is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": request.store,
        "temperature": payload.get("temperature", 1.0),
        "text": {"format": (text or {}).get("format") or {"type": "text"}},
        "tool_choice": payload.get("tool_choice") or "auto",
        "tools": payload.get("tools") or [],
        "top_p": payload.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": payload.get("user"),
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def output_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat completion's message as Responses output items."""
    out = []
    if message.get("reasoning_content"):
        out.append(reasoning_item(new_id("rs"), message["reasoning_content"]))
    if message.get("content"):
        out.append(message_item(new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        out.append(
            function_call_item(
                new_id("fc"),
                call.get("id") or new_id("call"),
                function.get("name", ""),
                function.get("arguments", ""),
            )
        )
    return out


def usage(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt = chat_usage.get("prompt_tokens") or 0
    completion = chat_usage.get("completion_tokens") or 0
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def finish(
    response: dict[str, Any],
    output: list[dict[str, Any]],
    finish_reason: str | None,
    chat_usage: Any,
) -> dict[str, Any]:
    """The response once generation ended: output, status, usage."""
    done = dict(response, output=output, usage=usage(chat_usage))
    if finish_reason == "length":
        for item in output:
            if item["type"] in ("message", "function_call"):  # a call's arguments cut short
                item["status"] = "incomplete"
        done["status"] = "incomplete"
        done["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        done["status"] = "completed"
    done["completed_at"] = int(time.time())
    return done


def from_chat_completion(response: dict[str, Any], completion: Any) -> dict[str, Any]:
    """The finished response from a (non-streamed) chat completion."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    return finish(
        response,
        output_items(message if isinstance(message, dict) else {}),
        choice.get("finish_reason") if isinstance(choice, dict) else None,
        completion.get("usage") if isinstance(completion, dict) else None,
    )
