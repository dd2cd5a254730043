"""
What a request-log record asked and answered, as text: the ``prompt`` and ``answer`` fields.

The record keeps each body in its own API family's shape (Docker's ``request`` and ``response``),
so an Anthropic message, an Ollama chat or a Responses object would reach the CLI and the
dashboard as raw JSON where an OpenAI chat shows its text.  One reading here, for every family,
serves both: the last user turn of the request, and the answer's text (its tool calls as
``name({...})`` when it called one; a count for embeddings and rerankings).  Pure: strings in,
a string out; a body it cannot read (not JSON, cut at the size limit) is returned as it is.
"""

from __future__ import annotations

import json
from typing import Any


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _parts_text(content: Any) -> str:
    """A message's content: a string, or the text of its parts (OpenAI, Anthropic, Responses)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "tool_result":
                texts.append(_parts_text(part.get("content")))
    return " ".join(t for t in texts if t)


def _joined(value: Any) -> str:
    if isinstance(value, list):
        return " | ".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def prompt_text(request: str) -> str:
    """The last user turn (chat, messages, Responses items), else the prompt, input or query."""
    body = _parse(request)
    if not isinstance(body, dict):
        return request
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return _parts_text(messages[-1].get("content"))
    items = body.get("input")
    if isinstance(items, list) and items and isinstance(items[-1], dict):  # Responses items
        last = items[-1]
        if "content" in last:
            return _parts_text(last["content"])
        return str(last.get("output") or last.get("arguments") or "")
    for key in ("prompt", "input", "query"):
        if key in body:
            return _joined(body[key])
    return request


def _call(name: Any, arguments: Any) -> str:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f"{name}({args})"


def _openai_message(message: dict[str, Any]) -> str:
    """An OpenAI or Ollama chat message: its text, else its tool calls, else its reasoning."""
    text = _parts_text(message.get("content"))
    if text:
        return text
    calls = [c.get("function") for c in message.get("tool_calls") or () if isinstance(c, dict)]
    named = [_call(f.get("name"), f.get("arguments", "")) for f in calls if isinstance(f, dict)]
    if named:
        return " ".join(named)
    return str(message.get("reasoning_content") or message.get("thinking") or "")


def _anthropic(content: list[Any]) -> str:
    texts, calls = [], []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            calls.append(_call(block.get("name"), block.get("input", {})))
    return "".join(texts) or " ".join(calls)


def _responses(output: list[Any]) -> str:
    texts, calls = [], []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts.append(_parts_text(item.get("content")))
        elif item.get("type") == "function_call":
            calls.append(_call(item.get("name"), item.get("arguments", "")))
    return "".join(texts) or " ".join(calls)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def answer_text(response: str) -> str:
    """The answer's text, whichever family's shape *response* is in."""
    body = _parse(response)
    if not isinstance(body, dict):
        return response
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):  # OpenAI
        first = choices[0]
        if isinstance(first.get("message"), dict):
            return _openai_message(first["message"])
        return str(first.get("text") or "")
    if body.get("type") == "message" and isinstance(body.get("content"), list):  # Anthropic
        return _anthropic(body["content"])
    if isinstance(body.get("output"), list):  # Responses
        return _responses(body["output"])
    if isinstance(body.get("message"), dict):  # Ollama /api/chat
        return _openai_message(body["message"])
    if isinstance(body.get("response"), str):  # Ollama /api/generate
        return str(body["response"])
    for key in ("data", "embeddings"):  # OpenAI and Ollama embeddings
        if isinstance(body.get(key), list):
            return _count(len(body[key]), "embedding")
    if isinstance(body.get("embedding"), list):  # Ollama's older /api/embeddings
        return _count(1, "embedding")
    if isinstance(body.get("results"), list):  # rerank
        return _count(len(body["results"]), "result")
    return response
