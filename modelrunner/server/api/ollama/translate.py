"""
Ollama's wire shapes to and from OpenAI's, as plain data: requests, answers, stream lines.

Requests: ``/api/chat`` and ``/api/generate`` become an OpenAI chat (or, for ``raw``, text)
completion with Ollama's ``options`` mapped onto llama-server's sampling parameters and
``format`` onto ``response_format``; ``/api/embed`` becomes ``/v1/embeddings``.  Answers: one
OpenAI JSON answer becomes one Ollama object; an SSE stream becomes Ollama's NDJSON lines through
``StreamTranslator``, the last with ``done: true``, ``done_reason`` and the counters (durations
in nanoseconds).  Store models become ``/api/tags`` entries.  Pure: no I/O, no aiohttp; bad
input raises ``InvalidRequest`` (400) naming the field.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from modelrunner.errors import InvalidRequest

Kind = Literal["chat", "generate"]

# Ollama option -> (llama-server parameter, accepted JSON types).  num_ctx is not here: a context
# size is fixed when llama-server starts, so it is a per-model setting (see ollama_api).
_NUMBER = (int, float)
OPTIONS: dict[str, tuple[str, tuple[type, ...]]] = {
    "num_predict": ("max_tokens", (int,)),
    "temperature": ("temperature", _NUMBER),
    "top_p": ("top_p", _NUMBER),
    "top_k": ("top_k", (int,)),
    "min_p": ("min_p", _NUMBER),
    "typical_p": ("typical_p", _NUMBER),
    "seed": ("seed", (int,)),
    "repeat_penalty": ("repeat_penalty", _NUMBER),
    "repeat_last_n": ("repeat_last_n", (int,)),
    "presence_penalty": ("presence_penalty", _NUMBER),
    "frequency_penalty": ("frequency_penalty", _NUMBER),
    "mirostat": ("mirostat", (int,)),
    "mirostat_tau": ("mirostat_tau", _NUMBER),
    "mirostat_eta": ("mirostat_eta", _NUMBER),
    "num_keep": ("n_keep", (int,)),
}
_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}
# Base64 openings of the image formats llama-server's projector reads (Ollama sends bare base64).
_IMAGE_MAGIC = {"iVBORw0KGgo": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif"}
_IMAGE_MAGIC_WEBP = "UklGR"


def obj(value: Any) -> dict[str, Any]:
    """*value* if it is a JSON object, else an empty one (answers are read leniently)."""
    return value if isinstance(value, dict) else {}


def now_iso() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC with a ``Z``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso_of(unix_s: float) -> str:
    return datetime.fromtimestamp(max(0.0, unix_s), UTC).isoformat().replace("+00:00", "Z")


def model_name(payload: dict[str, Any]) -> Any:
    """Ollama's ``model``, or the older ``name``."""
    return payload.get("model") if payload.get("model") is not None else payload.get("name")


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def map_options(options: Any) -> dict[str, Any]:
    """Ollama's ``options`` as llama-server sampling parameters (unknown ones are ignored, as
    Ollama's runners ignore those they do not know)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidRequest("'options' must be an object such as {\"temperature\": 0.7}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "stop":
            stop = [value] if isinstance(value, str) else value
            if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
                raise InvalidRequest("options.stop must be a string or a list of strings")
            out["stop"] = stop
            continue
        if key == "num_ctx":
            if not _is(value, (int,)) or value < 1:
                raise InvalidRequest("options.num_ctx must be a positive integer")
            continue
        target = OPTIONS.get(key)
        if target is None:
            continue
        name, types = target
        if not _is(value, types) or (isinstance(value, float) and not math.isfinite(value)):
            kind = "an integer" if types == (int,) else "a number"
            raise InvalidRequest(f"options.{key} must be {kind}, got {json.dumps(value)[:40]}")
        if key == "num_predict" and value < 0:
            continue  # -1 (no limit) and -2 (fill the context): llama-server's default
        out[name] = value
    return out


def map_format(fmt: Any) -> dict[str, Any] | None:
    """``format: "json"`` -> JSON mode; a JSON schema -> output constrained to it."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise InvalidRequest("'format' must be \"json\" or a JSON schema object")


def _image_url(image: Any) -> dict[str, Any]:
    if not isinstance(image, str) or not image:
        raise InvalidRequest("each image must be a base64-encoded string")
    if image.startswith("data:"):
        url = image
    else:
        mime = next((m for p, m in _IMAGE_MAGIC.items() if image.startswith(p)), None)
        if mime is None:
            mime = "image/webp" if image.startswith(_IMAGE_MAGIC_WEBP) else "image/png"
        url = f"data:{mime};base64,{image}"
    return {"type": "image_url", "image_url": {"url": url}}


def _content(text: str, images: Any) -> str | list[dict[str, Any]]:
    if images is None or images == []:
        return text
    if not isinstance(images, list):
        raise InvalidRequest("'images' must be a list of base64-encoded strings")
    return [{"type": "text", "text": text}, *(_image_url(i) for i in images)]


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise InvalidRequest("'tool_calls' must be a list")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest('each tool call must be {"function": {"name": ..., ...}}')
        arguments = function.get("arguments", {})
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        out.append(
            {
                "id": str(call.get("id") or f"call_{i}"),
                "type": "function",
                "function": {"name": function["name"], "arguments": text},
            }
        )
    return out


def convert_message(message: Any) -> dict[str, Any]:
    """One Ollama chat message as an OpenAI one (images as content parts, tool calls with
    their arguments as a JSON string)."""
    if not isinstance(message, dict):
        raise InvalidRequest("each message must be an object with a 'role'")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidRequest("each message must have a 'role' (system, user, assistant or tool)")
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise InvalidRequest("a message's 'content' must be a string")
    out: dict[str, Any] = {"role": role, "content": _content(content, message.get("images"))}
    if message.get("tool_calls"):
        out["tool_calls"] = _tool_calls(message["tool_calls"])
    if role == "tool":
        if isinstance(message.get("tool_name"), str):
            out["name"] = message["tool_name"]
        if isinstance(message.get("tool_call_id"), str):
            out["tool_call_id"] = message["tool_call_id"]
    return out


def _sampling(payload: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    out.update(map_options(payload.get("options")))
    response_format = map_format(payload.get("format"))
    if response_format is not None:
        out["response_format"] = response_format
    if isinstance(payload.get("think"), bool):
        out["chat_template_kwargs"] = {"enable_thinking": payload["think"]}
    if out.get("stream"):
        out["stream_options"] = {"include_usage": True}
    return out


def wants_stream(payload: dict[str, Any]) -> bool:
    """Ollama streams unless told ``stream: false``."""
    stream = payload.get("stream", True)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false")
    return stream is not False


def chat_request(payload: dict[str, Any], model: str) -> dict[str, Any]:
    """``/api/chat`` -> an OpenAI chat completion request."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list of messages")
    out: dict[str, Any] = {
        "model": model,
        "messages": [convert_message(m) for m in messages],
        "stream": wants_stream(payload),
    }
    tools = payload.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("'tools' must be a list of tool definitions")
        if tools:
            out["tools"] = tools
    return _sampling(payload, out)


def generate_request(payload: dict[str, Any], model: str) -> tuple[str, dict[str, Any]]:
    """``/api/generate`` -> (llama-server path, request): a chat completion of the system and
    prompt, or with ``raw: true`` a text completion of the prompt as it is."""
    prompt, system = payload.get("prompt"), payload.get("system")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string")
    if system is not None and not isinstance(system, str):
        raise InvalidRequest("'system' must be a string")
    stream = wants_stream(payload)
    if payload.get("raw") is True:
        if payload.get("images"):
            raise InvalidRequest("'images' cannot be sent with raw: true")
        out: dict[str, Any] = {"model": model, "prompt": prompt, "stream": stream}
        return "/v1/completions", _sampling(payload, out)
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, payload.get("images"))})
    out = {"model": model, "messages": messages, "stream": stream}
    return "/v1/chat/completions", _sampling(payload, out)


def embed_inputs(payload: dict[str, Any], legacy: bool) -> list[str]:
    """The texts of ``/api/embed`` (``input``: a string or a list) or ``/api/embeddings``
    (``prompt``); an empty list only loads the model."""
    key = "prompt" if legacy else "input"
    value = payload.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if not legacy and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidRequest(f"{key!r} must be a string" + ("" if legacy else " or a list of strings"))


def embed_dimensions(payload: dict[str, Any]) -> int | None:
    dims = payload.get("dimensions")
    if dims is None:
        return None
    if not _is(dims, (int,)) or dims < 1:
        raise InvalidRequest("'dimensions' must be a positive integer")
    return int(dims)


def truncate_embedding(vector: list[float], dims: int | None) -> list[float]:
    """Ollama's ``dimensions``: the first *dims* values, L2-normalised again."""
    if dims is None or dims >= len(vector):
        return vector
    cut = vector[:dims]
    norm = math.sqrt(sum(v * v for v in cut))
    return [v / norm for v in cut] if norm > 0 else cut


def ns(ms: Any) -> int:
    return int(ms * 1_000_000) if isinstance(ms, int | float) and ms > 0 else 0


@dataclass
class Counters:
    """What the last line reports; durations in nanoseconds."""

    started_ns: int
    prompt_eval_count: int = 0
    prompt_eval_ns: int = 0
    eval_count: int = 0
    eval_ns: int = 0

    def take(self, answer: dict[str, Any]) -> None:
        """Counts from llama-server's ``timings`` (richer) or OpenAI's ``usage``."""
        timings = answer.get("timings")
        if isinstance(timings, dict):
            prompt = (timings.get("cache_n") or 0) + (timings.get("prompt_n") or 0)
            self.prompt_eval_count = int(prompt)
            self.prompt_eval_ns = ns(timings.get("prompt_ms"))
            self.eval_count = int(timings.get("predicted_n") or 0)
            self.eval_ns = ns(timings.get("predicted_ms"))
        usage = answer.get("usage")
        if isinstance(usage, dict):
            self.prompt_eval_count = int(usage.get("prompt_tokens") or self.prompt_eval_count)
            self.eval_count = int(usage.get("completion_tokens") or self.eval_count)

    def fields(self) -> dict[str, int]:
        total = max(0, time.monotonic_ns() - self.started_ns)
        # What the runner did not spend evaluating: its load (if it had to start) and our hops.
        load = max(0, total - self.prompt_eval_ns - self.eval_ns)
        return {
            "total_duration": total,
            "load_duration": load,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_ns,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_ns,
        }

    def usage(self) -> dict[str, Any]:
        """For the daemon's metrics (the proxy's usage record)."""
        return {"prompt_tokens": self.prompt_eval_count, "completion_tokens": self.eval_count}


def _arguments(text: str) -> Any:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"value": value}


@dataclass
class StreamTranslator:
    """OpenAI answers (whole or as SSE chunks) -> Ollama's objects, for one request."""

    kind: Kind
    model: str
    counters: Counters
    done_reason: str = "stop"
    _tools: dict[int, dict[str, str]] = field(default_factory=dict)
    _pending: bytes = b""

    def line(self, text: str, thinking: str = "", done: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.kind == "chat":
            out["message"] = {"role": "assistant", "content": text}
            if thinking:
                out["message"]["thinking"] = thinking
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out["done"] = done
        return out

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        """One non-streamed answer as Ollama's single ``done: true`` object."""
        self.counters.take(answer)
        choice = _first_choice(answer)
        message = obj(choice.get("message"))
        text = message.get("content") if "message" in choice else choice.get("text")
        line = self.line(str(text or ""), str(message.get("reasoning_content") or ""), True)
        calls = message.get("tool_calls")
        if self.kind == "chat" and isinstance(calls, list) and calls:
            line["message"]["tool_calls"] = [_ollama_call(c) for c in calls]
        self.done_reason = _DONE_REASONS.get(str(choice.get("finish_reason")), "stop")
        return {**line, "done_reason": self.done_reason, **self.counters.fields()}

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The Ollama lines for the complete SSE events in *data* (partial ones are kept)."""
        complete, _, self._pending = (self._pending + data).rpartition(b"\n")
        lines = []
        for raw in complete.split(b"\n"):
            raw = raw.strip()
            if not raw.startswith(b"data:"):
                continue
            body = raw[5:].strip()
            if body == b"[DONE]":
                continue
            try:
                event = json.loads(body)
            except ValueError:
                continue
            if isinstance(event, dict):
                line = self._event(event)
                if line is not None:
                    lines.append(line)
        return lines

    def _event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(event.get("error"), dict | str):
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            return {"error": str(message or "the runner failed")}
        self.counters.take(event)
        choice = _first_choice(event)
        if choice.get("finish_reason"):
            self.done_reason = _DONE_REASONS.get(str(choice["finish_reason"]), "stop")
        delta = obj(choice.get("delta"))
        for call in delta.get("tool_calls") or ():
            self._collect_tool(call)
        text = delta.get("content") if "delta" in choice else choice.get("text")
        thinking = delta.get("reasoning_content") or ""
        if not text and not thinking:
            return None
        return self.line(str(text or ""), str(thinking))

    def _collect_tool(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        index = call.get("index")
        if not isinstance(index, int):
            index = len(self._tools)
        slot = self._tools.setdefault(index, {"name": "", "arguments": ""})
        function = obj(call.get("function"))
        slot["name"] += str(function.get("name") or "")
        slot["arguments"] += str(function.get("arguments") or "")

    def finish(self) -> list[dict[str, Any]]:
        """The tool calls (if any) and the last, ``done: true`` line."""
        lines = []
        if self._tools and self.kind == "chat":
            line = self.line("")
            line["message"]["tool_calls"] = [
                {"function": {"name": t["name"], "arguments": _arguments(t["arguments"])}}
                for _, t in sorted(self._tools.items())
            ]
            lines.append(line)
        last = self.line("", done=True)
        lines.append({**last, "done_reason": self.done_reason, **self.counters.fields()})
        return lines


def _first_choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _ollama_call(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    arguments = function.get("arguments")
    return {
        "function": {
            "name": str(function.get("name") or ""),
            "arguments": _arguments(arguments) if isinstance(arguments, str) else arguments or {},
        }
    }


def upstream_error(data: bytes, status: int) -> str:
    """llama-server's (OpenAI-shaped) error message, for Ollama's ``{"error": ...}``."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if isinstance(value, dict):
        error = value.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    text = data.decode(errors="replace").strip()
    return text[:500] or f"the runner answered {status}"


def details(config: Any) -> dict[str, Any]:
    """Ollama's ``details`` from Docker's model config."""
    config = config if isinstance(config, Mapping) else {}
    family = str(config.get("architecture") or "")
    return {
        "parent_model": "",
        "format": str(config.get("format") or "gguf"),
        "family": family,
        "families": [family] if family else None,
        "parameter_size": str(config.get("parameters") or ""),
        "quantization_level": str(config.get("quantization") or ""),
    }


def tag_entries(
    model_id: str, tags: tuple[str, ...], created: int, size: int, config: Any
) -> list[dict[str, Any]]:
    """``/api/tags`` entries of one store model: one per tag (as Ollama lists), else its id."""
    digest = model_id.removeprefix("sha256:")
    return [
        {
            "name": tag,
            "model": tag,
            "modified_at": iso_of(created),
            "size": size,
            "digest": digest,
            "details": details(config),
        }
        for tag in (tags or (model_id,))
    ]


def model_info(config: Any) -> dict[str, Any]:
    """``/api/show``'s ``model_info``: the GGUF metadata, numbers as numbers."""
    gguf = config.get("gguf") if isinstance(config, Mapping) else None
    out: dict[str, Any] = {}
    for key, value in (gguf or {}).items():
        if key.startswith("tokenizer.ggml.") or key == "tokenizer.chat_template":
            continue  # vocabularies and the template: /api/show's template field has the latter
        out[key] = _number(value)
    return out


def _number(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value
