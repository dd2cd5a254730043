"""
Anthropic's Messages API: ``POST .../v1/messages`` and ``.../v1/messages/count_tokens``.

Served under ``/`` (the ``anthropic`` package and Claude Code with
``ANTHROPIC_BASE_URL=http://localhost:12434``), ``/anthropic`` (Docker's path), ``/engines`` and
``/engines/{backend}``.  llama-server speaks this API itself, so the body goes to the model's
runner unchanged and a streamed answer comes back untouched, through ``openai_api.serve()``
(the same lookup, load on demand, admission, keep-alive and metrics as the OpenAI routes).
What this module adds: Anthropic's required fields (``max_tokens`` and at least one message, as
Anthropic answers 400 without them; count_tokens takes no ``max_tokens``), the checks
llama-server would answer with a 500 or take the wrong way (a ``max_tokens`` beyond its 32-bit
counter), Anthropic's error shape for the runner's errors (llama-server answers these routes
with OpenAI's), and token counts for the metrics from Anthropic's ``usage`` (``message_start``
carries the input, ``message_delta`` the output).  ``x-api-key``, ``anthropic-version`` and
``anthropic-beta`` are accepted and not checked.

Two kinds of request go to the runner's chat completions instead, translated there and back by
``anthropic_convert`` (``ChatRelay``), through the same ``serve()``: a forced ``tool_choice``
(``{"type": "any"}``, ``{"type": "tool", "name": ...}``), held to the call (``forced_tools``),
and every request for a backend without the Messages API (MLX: its ``native_apis``; no
count_tokens there).  ``{"type": "none"}``, which llama-server's converter drops (leaving the
model free to call), goes without the tools.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from modelrunner.errors import InvalidRequest, ModelRunnerError, UpstreamError
from modelrunner.server.api import anthropic_convert as convert
from modelrunner.server.api.forced_tools import ChatCall, Forced
from modelrunner.server.api.openai_api import (
    CHAT,
    check_backend,
    check_client_errors,
    check_model_backend,
    forcing,
    serve,
)
from modelrunner.server.catalog import display_name
from modelrunner.server.middleware import anthropic_shape, parse_json_object, read_body
from modelrunner.server.relay import sse
from modelrunner.server.relay.answer import RunnerAnswer
from modelrunner.server.relay.proxy import Forwarded, Relay, relay_headers, runner_chunks
from modelrunner.server.state import STATE

if TYPE_CHECKING:
    from modelrunner.distribution.model import Model
    from modelrunner.server.state import ServerState

PREFIXES = ("/engines/{backend}", "/engines", "/anthropic", "")
MAX_TOKENS = 2**31 - 1  # llama-server's n_predict is an int32: beyond it the count wraps


def _bad(field: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: must be {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_max_tokens(payload: dict[str, Any]) -> None:
    """Required, as Anthropic requires it: without it llama-server would generate up to its own
    4,096-token default (the model's ``--n-predict`` does not apply to this route)."""
    if "max_tokens" not in payload:
        raise InvalidRequest(
            f"max_tokens: field required (the most tokens to generate, from 1 to {MAX_TOKENS})"
        )
    max_tokens = payload["max_tokens"]
    if not (_is_int(max_tokens) and 1 <= max_tokens <= MAX_TOKENS):
        raise _bad("max_tokens", f"an integer from 1 to {MAX_TOKENS}")


def check_request(payload: dict[str, Any], *, counting: bool) -> str:
    """The model name, after the checks that must not reach llama-server as they are."""
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model", "the name of a model in the store (a non-empty string)")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _bad("messages", 'an array of message objects ({"role": "user", "content": ...})')
    if not messages and not counting:
        # Anthropic's 400: without a turn to answer the runner would generate from nothing.
        raise InvalidRequest("messages: at least one message is required")
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, str | list) or (
            isinstance(content, list) and not all(isinstance(b, dict) for b in content)
        ):
            raise _bad(f"messages.{i}.content", "a string or an array of content blocks")
    system = payload.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _bad("system", "a string or an array of text blocks")
    tools = payload.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools)
    ):
        raise _bad("tools", 'an array of tool definitions ({"name": ..., "input_schema": {...}})')
    if not counting:  # count_tokens takes no max_tokens
        _check_max_tokens(payload)
    if "stream" in payload and not isinstance(payload["stream"], bool):
        raise _bad("stream", "true or false")
    return model


def _usage_counts(usage: Any) -> dict[str, int]:
    """Anthropic's ``usage`` as the metrics' prompt/completion counts (cache reads are input)."""
    if not isinstance(usage, dict):
        return {}
    out: dict[str, int] = {}
    prompt: list[int] = [
        usage[k] for k in ("input_tokens", "cache_read_input_tokens") if _is_int(usage.get(k))
    ]
    if prompt:
        out["prompt_tokens"] = sum(prompt)
    if _is_int(usage.get("output_tokens")):
        out["completion_tokens"] = usage["output_tokens"]
    return out


class AnthropicRelay:
    """The runner's answer as it is, but for errors in Anthropic's shape; usage noted."""

    async def __call__(
        self, request: web.Request, up: RunnerAnswer, state: Forwarded
    ) -> web.StreamResponse:
        state.error_line = self.error_event
        headers = relay_headers(up)
        if up.status >= 400:
            data = await up.read()
            body = anthropic_shape(up.status, sse.error_message(data, up.status), "upstream_error")
            return web.json_response(body, status=up.status)
        if "text/event-stream" not in up.headers.get("Content-Type", ""):
            data = await up.read()
            value = sse.Event(None, data.decode(errors="replace")).json()
            if isinstance(value, dict):
                state.usage = _usage_counts(value.get("usage")) or None
            return web.Response(status=up.status, body=data, headers=headers)
        headers.update(sse.SSE_HEADERS)
        response = web.StreamResponse(status=up.status, headers=headers)
        await response.prepare(request)
        state.response, state.streaming = response, True
        parser = sse.SSEParser()
        counts: dict[str, int] = {}
        async for chunk in runner_chunks(up, state):
            for event in parser.feed(chunk):
                self._note(event, counts, state)
            await sse.write(response, chunk)
        for event in parser.close():
            self._note(event, counts, state)
        await response.write_eof()
        return response

    @staticmethod
    def _note(event: sse.Event, counts: dict[str, int], state: Forwarded) -> None:
        if '"usage"' not in event.data:
            return
        value = event.json()
        if not isinstance(value, dict):
            return
        message = value.get("message")
        usage = message.get("usage") if isinstance(message, dict) else value.get("usage")
        counts.update(_usage_counts(usage))
        state.usage = dict(counts)

    def error_event(self, error: ModelRunnerError) -> bytes:
        return error_event(error)


def error_event(error: ModelRunnerError) -> bytes:
    return sse.encode("error", anthropic_shape(500, error.message, error.code))


class ChatRelay:
    """The runner's chat completions answer (whole or streamed) in Anthropic's shapes
    (``anthropic_convert``); for a forced *call*, its text read as that call first
    (``ChatCall``)."""

    def __init__(self, model: str, call: Forced | None = None) -> None:
        self.model = model
        self.call = ChatCall(call) if call is not None else None

    async def __call__(
        self, request: web.Request, up: RunnerAnswer, state: Forwarded
    ) -> web.StreamResponse:
        state.error_line = error_event
        if up.status >= 400:
            data = await up.read()
            body = anthropic_shape(up.status, sse.error_message(data, up.status), "upstream_error")
            return web.json_response(body, status=up.status)
        if "text/event-stream" not in up.headers.get("Content-Type", ""):
            completion = sse.Event(None, (await up.read()).decode(errors="replace")).json()
            if not isinstance(completion, dict):
                raise UpstreamError("the runner's answer was not a JSON object")
            if isinstance(completion.get("usage"), dict):
                state.usage = completion["usage"]
            if self.call is not None:
                completion = self.call.whole(completion)
            return web.json_response(convert.message(completion, self.model))
        headers = relay_headers(up)
        headers.update(sse.SSE_HEADERS)
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        state.response, state.streaming = response, True
        events = convert.EventStream(self.model)
        await self._send(response, events.start())
        parser = sse.SSEParser()
        async for chunk in runner_chunks(up, state):
            for event in parser.feed(chunk):
                if not await self._chunk(response, events, event, state):
                    return response
        for event in parser.close():
            if not await self._chunk(response, events, event, state):
                return response
        await self._send(response, events.finish())
        await response.write_eof()
        return response

    async def _chunk(
        self,
        response: web.StreamResponse,
        events: convert.EventStream,
        event: sse.Event,
        state: Forwarded,
    ) -> bool:
        """Relay one chat chunk; False once the runner's stream broke off with an error."""
        value = event.json()
        if not isinstance(value, dict):
            return True  # [DONE]
        if isinstance(value.get("error"), dict):
            message = str(value["error"].get("message") or "the runner failed")
            body = anthropic_shape(500, message, "upstream_error")
            await sse.write(response, sse.encode("error", body))
            await response.write_eof()
            return False
        if isinstance(value.get("usage"), dict):
            state.usage = value["usage"]
        if self.call is not None:
            value = self.call.chunk(value)
        await self._send(response, events.chunk(value))
        return True

    @staticmethod
    async def _send(response: web.StreamResponse, events: list[convert.Event]) -> None:
        if events:
            await sse.write(response, b"".join(sse.encode(kind, data) for kind, data in events))


def messages_handler(upstream_path: str, *, counting: bool) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        check_backend(request)
        state = request.app[STATE]
        body = await read_body(request, state.config.server.max_body_bytes)
        payload = parse_json_object(body)
        model = await state.catalog.lookup(check_request(payload, counting=counting))
        check_model_backend(state, model, request.match_info.get("backend"))
        name = display_name(model)
        stream = payload.get("stream") is True and not counting
        path, sent, relay = _route(state, model, payload, upstream_path, body, counting=counting)
        return await serve(
            state,
            request,
            model.id,
            name,
            "completion",
            path,
            sent,
            None,
            stream=stream,
            relay=relay,
        )

    return handler


def _route(
    state: ServerState,
    model: Model,
    payload: dict[str, Any],
    path: str,
    body: bytes,
    *,
    counting: bool,
) -> tuple[str, bytes, Relay]:
    """Where a request goes, with what, and how its answer comes back: the runner's own
    Messages API as it came (``none`` without the tools), or its chat completions, translated,
    for a forced call (held to it) or a backend without that API."""
    backend = state.supervisor.backends.for_format(model.format)
    native = backend is None or "anthropic" in backend.native_apis
    if counting:
        if backend is not None and not native:
            raise InvalidRequest(
                f"count_tokens is not available for model {display_name(model)!r}: its "
                f"backend ({backend.name}) has no tokenizer endpoint"
            )
        return path, body, AnthropicRelay()
    choice = convert.chat_tool_choice(payload.get("tool_choice"))
    if choice == "none":
        payload = {k: v for k, v in payload.items() if k not in ("tools", "tool_choice")}
        body, choice = json.dumps(payload).encode(), None
    call = forcing(state, model, convert.chat_tools(payload.get("tools")), choice)
    if call is None and native:
        return path, body, AnthropicRelay()
    chat = convert.chat_body(payload, choice)
    check_client_errors(chat, "completion", has_projector=model.mmproj_path is not None)
    if call is not None:
        chat = call.constrain(chat)
    return CHAT, json.dumps(chat).encode(), ChatRelay(display_name(model), call)


def add_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        app.router.add_post(
            prefix + "/v1/messages", messages_handler("/v1/messages", counting=False)
        )
        app.router.add_post(
            prefix + "/v1/messages/count_tokens",
            messages_handler("/v1/messages/count_tokens", counting=True),
        )
