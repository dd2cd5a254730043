"""
The request log (``GET /engines/requests``): the last requests to each model, in Docker's shape.

Docker's ``pkg/metrics/openai_recorder.go``: per model ``{model, count, config, records}``, each
record ``{id, model, method, url, request, response, error, timestamp, status_code,
user_agent}``, the last ``server.request_log_records`` (Docker: 10) per model.

Cheap on the hot path by construction: the relay hands each chunk to ``Record.tap``, which only
appends it to a list until ``server.request_log_body_bytes`` are held (then counts the rest).
Nothing is parsed while the answer streams.  The work happens once, lazily, when somebody reads
the record (``to_api``): base64 media in the request shortened, a streamed answer folded into
one response body (OpenAI chat and text completions; Anthropic messages), an error answer moved
to ``error`` as JSON; ``prompt`` and ``answer`` (beside Docker's fields) say both as text, for
every API family (``record_text``).  Only the method, path, body and User-Agent are kept: never
a header such as ``Authorization`` or ``x-api-key``, never the query string.  Knows nothing of
runners or routes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from modelrunner.server.observe.record_text import answer_text, prompt_text
from modelrunner.server.observe.sse_hub import Hub, frame

MAX_MODELS = 32  # models with records; the least recently used beyond this are forgotten
MEDIA_KEEP = 100  # characters of a base64 blob kept (Docker's maxMediaDataLength)
MEDIA_MIN = 256  # shorter strings are left alone
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_ids = itertools.count(1)


def shorten_media(value: Any) -> Any:
    """*value* with every long base64 string (data: URLs, raw blobs) cut to MEDIA_KEEP chars."""
    if isinstance(value, dict):
        return {k: shorten_media(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten_media(v) for v in value]
    if isinstance(value, str) and len(value) > MEDIA_MIN:
        head, comma, data = value.partition(",") if value.startswith("data:") else ("", "", value)
        if len(data) > MEDIA_KEEP and _BASE64.fullmatch(data[: 4 * MEDIA_MIN]):
            cut = len(data) - MEDIA_KEEP
            return f"{head}{comma}{data[:MEDIA_KEEP]}...[truncated {cut} chars]"
    return value


def request_text(body: bytes, limit: int) -> str:
    """The request body as kept: media shortened, then at most *limit* bytes."""
    text = body.decode("utf-8", "replace")
    if b"base64" in body or len(body) > limit:
        with contextlib.suppress(ValueError):  # not JSON: kept as text, cut below
            text = json.dumps(shorten_media(json.loads(body)), ensure_ascii=False)
    return _cut(text, limit)


def _cut(text: str, limit: int, more: int = 0) -> str:
    if len(text) <= limit and not more:
        return text
    dropped = max(0, len(text) - limit) + more
    return f"{text[:limit]}...[truncated {dropped} bytes]"


def _as_error(text: str) -> str:
    """Docker's ``normalizeErrorToJSON``: the error as JSON, wrapped if it is not."""
    if not text.strip():
        return json.dumps({"error": "unknown error"})
    try:
        json.loads(text)
    except ValueError:
        return json.dumps({"error": text})
    return text


def fold_stream(text: str) -> tuple[str | None, str | None]:
    """(response, error) of an SSE answer: the chunks folded into one completion object."""
    content: list[str] = []
    reasoning: list[str] = []
    last: dict[str, Any] | None = None
    choice: dict[str, Any] = {}
    anthropic: dict[str, Any] | None = None
    for line in text.split("\n"):
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            return None, json.dumps(chunk["error"] if isinstance(chunk["error"], dict) else chunk)
        kind = chunk.get("type")
        if kind == "message_start" and isinstance(chunk.get("message"), dict):
            anthropic = dict(chunk["message"])
            continue
        if anthropic is not None:
            _fold_anthropic(anthropic, chunk, content)
            continue
        last = chunk
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = {**choice, **choices[0]}
            delta = choices[0].get("delta")
            if isinstance(delta, dict):
                content.append(delta.get("content") or "")
                reasoning.append(delta.get("reasoning_content") or "")
            elif isinstance(choices[0].get("text"), str):
                content.append(choices[0]["text"])
    if anthropic is not None:
        anthropic["content"] = [{"type": "text", "text": "".join(content)}]
        return json.dumps(anthropic, ensure_ascii=False), None
    if last is None:
        return None, None
    folded = dict(last)
    choice.pop("delta", None)
    if "text" in choice:
        choice["text"] = "".join(content)
        folded["object"] = "text_completion"
    else:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
        if any(reasoning):
            message["reasoning_content"] = "".join(reasoning)
        choice["message"] = message
        folded["object"] = "chat.completion"
    choice.setdefault("finish_reason", "stop")
    folded["choices"] = [choice]
    return json.dumps(folded, ensure_ascii=False), None


def _fold_anthropic(message: dict[str, Any], chunk: dict[str, Any], content: list[str]) -> None:
    delta = chunk.get("delta")
    if not isinstance(delta, dict):
        return
    if chunk.get("type") == "content_block_delta" and isinstance(delta.get("text"), str):
        content.append(delta["text"])
    elif chunk.get("type") == "message_delta":
        message.update({k: v for k, v in delta.items() if k == "stop_reason"})
        if isinstance(chunk.get("usage"), dict):
            message["usage"] = chunk["usage"]


@dataclass(eq=False, slots=True)
class Record:
    """One request and what came back, held raw until somebody reads it."""

    id: str
    model: str
    model_id: str
    method: str
    url: str
    user_agent: str
    body: bytes
    limit: int
    timestamp: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)
    status_code: int = 0  # 0 while in progress (Docker's zero value)
    error: str = ""
    duration_ms: float | None = None
    chunks: list[bytes] = field(default_factory=list)
    held: int = 0
    dropped: int = 0
    last: bytes = b""
    done: bool = False
    backend: str = ""  # the engine that served it (llama.cpp, mlx); "" until a runner took it
    _api: dict[str, Any] | None = None

    def tap(self, chunk: bytes) -> None:
        """The relay's hook, once per chunk: keep it if there is room, else count it."""
        self.last = chunk
        room = self.limit - self.held
        if room <= 0:
            self.dropped += len(chunk)
            return
        if len(chunk) > room:
            self.dropped += len(chunk) - room
            chunk = chunk[:room]
        self.chunks.append(chunk)
        self.held += len(chunk)

    def compact(self) -> None:
        """Keep only what the record shows of a request body bigger than the limit."""
        if len(self.body) > self.limit:
            self.body = request_text(self.body, self.limit).encode()

    def to_api(self) -> dict[str, Any]:
        """Docker's record object (folded and shortened the first time, then cached)."""
        if self._api is not None:
            return self._api
        raw = b"".join(self.chunks).decode("utf-8", "replace")
        response, error = raw, self.error
        if not error and "data:" in raw:
            folded, stream_error = fold_stream(raw)
            if stream_error is not None:
                response, error = "", stream_error
            elif folded is not None:
                response = folded
        if not error and self.status_code >= 400:
            response, error = "", _as_error(raw)
        request = request_text(self.body, self.limit)
        response = "" if error else _cut(response, self.limit, self.dropped)
        api = {
            "id": self.id,
            "model": self.model,
            "method": self.method,
            "url": self.url,
            "request": request,
            "response": response,
            "error": error,
            "timestamp": self.timestamp,
            "status_code": self.status_code,
            "user_agent": self.user_agent,
            "model_id": self.model_id,
            "duration_ms": self.duration_ms,
            "prompt": prompt_text(request),
            "answer": answer_text(response) if response else "",
            "backend": self.backend,  # ours, beyond Docker's keys
        }
        if self.done:
            self._api = api
            self.chunks = []  # folded: the raw chunks are not needed any more
        return api


class RequestLog:
    """The last records per model, bounded in count, models and bytes; followers via a hub."""

    def __init__(self, *, per_model: int = 10, body_bytes: int = 256 * 1024) -> None:
        self.per_model = per_model
        self.body_bytes = body_bytes
        self.hub = Hub("requests", 100)  # Docker's subscriberChannelBuffer
        self._models: collections.OrderedDict[str, collections.deque[Record]] = (
            collections.OrderedDict()
        )
        self.config: dict[str, dict[str, Any]] = {}  # model id -> Docker's BackendConfiguration

    def begin(
        self,
        *,
        model_id: str,
        model: str,
        method: str,
        url: str,
        user_agent: str,
        body: bytes,
        started: float | None = None,
    ) -> Record:
        record = Record(
            id=f"{model_id}_{time.time_ns()}_{next(_ids)}",
            model=model,
            model_id=model_id,
            method=method,
            url=url,
            user_agent=user_agent,
            body=body,  # a big one is cut after the answer (compact), not before it
            limit=self.body_bytes,
            started=time.monotonic() if started is None else started,
        )
        records = self._models.get(model_id)
        if records is None:
            records = self._models[model_id] = collections.deque(maxlen=self.per_model)
            while len(self._models) > MAX_MODELS:
                self._models.popitem(last=False)
        self._models.move_to_end(model_id)
        records.append(record)
        return record

    def finish(self, record: Record, status: int, error: str = "") -> None:
        record.status_code = status
        record.error = record.error or error
        record.duration_ms = round((time.monotonic() - record.started) * 1000, 1)
        record.done = True
        if len(record.body) > self.body_bytes:
            # Off the request's path: the parse to shorten media runs after the handler returns.
            asyncio.get_running_loop().call_soon(record.compact)
        if self.hub.subscribers:
            self.hub.publish(
                frame("new_request", [self.group(record.model_id, [record])]), topic=record.model_id
            )

    def group(self, model_id: str, records: list[Record]) -> dict[str, Any]:
        """Docker's ``ModelRecordsResponse`` for *records* of one model."""
        name = records[-1].model if records else model_id
        return {
            "model": name,
            "count": len(records),
            "config": self.config.get(model_id, {}),
            "records": [r.to_api() for r in records],
            "model_id": model_id,
        }

    def groups(self, model_id: str | None = None) -> list[dict[str, Any]]:
        return [
            self.group(mid, list(records))
            for mid, records in self._models.items()
            if model_id is None or mid == model_id
        ]

    def find(self, name: str) -> str | None:
        """The model id whose records carry display name *name* (a model since deleted)."""
        for mid, records in self._models.items():
            if any(r.model == name for r in records):
                return mid
        return None
