"""
Anthropic's Messages API: ``POST .../v1/messages`` and ``.../v1/messages/count_tokens``.

Served under ``/`` (the ``anthropic`` package and Claude Code with
``ANTHROPIC_BASE_URL=http://localhost:12434``), ``/anthropic`` (Docker's path), ``/engines`` and
``/engines/{backend}``.  llama-server speaks this API itself, so the body goes to the model's
runner unchanged and a streamed answer comes back untouched, through ``openai_api.serve()``
(the same lookup, load on demand, admission, keep-alive and metrics as the OpenAI routes).  A
backend that does not (MLX: its ``native_apis``) gets the request as chat completions and its
answer translated back (``anthropic_convert``), through the same ``serve()``.
What this module adds: the checks llama-server would answer with a 500 or take the wrong way
(a ``max_tokens`` beyond its 32-bit counter), Anthropic's error shape for the runner's errors
(llama-server answers these routes with OpenAI's), and token counts for the metrics from
Anthropic's ``usage`` (``message_start`` carries the input, ``message_delta`` the output).
``x-api-key``, ``anthropic-version`` and ``anthropic-beta`` are accepted and not checked.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from modelrunner.errors import InvalidRequest, ModelRunnerError, UpstreamError
from modelrunner.server import anthropic_convert, sse
from modelrunner.server.catalog import display_name
from modelrunner.server.middleware import anthropic_shape, parse_json_object, read_body
from modelrunner.server.openai_api import check_backend, check_model_backend, serve
from modelrunner.server.proxy import ClientGone, Forwarded, relay_headers, runner_chunks
from modelrunner.server.state import STATE

PREFIXES = ("/engines/{backend}", "/engines", "/anthropic", "")
MAX_TOKENS = 2**31 - 1  # llama-server's n_predict is an int32: beyond it the count wraps


def _bad(field: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: must be {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_request(payload: dict[str, Any], *, counting: bool) -> str:
    """The model name, after the checks that must not reach llama-server as they are."""
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model", "the name of a model in the store (a non-empty string)")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _bad("messages", 'an array of message objects ({"role": "user", "content": ...})')
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
    max_tokens = payload.get("max_tokens")
    if (not counting and max_tokens is not None) and not (
        _is_int(max_tokens) and 1 <= max_tokens <= MAX_TOKENS
    ):
        raise _bad("max_tokens", f"an integer from 1 to {MAX_TOKENS}")
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
        self, request: web.Request, up: aiohttp.ClientResponse, state: Forwarded
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
        return sse.encode("error", anthropic_shape(500, error.message, error.code))


class ChatAsAnthropicRelay:
    """A chat completions answer (whole or streamed) relayed in Anthropic's shapes."""

    def __init__(self, model: str) -> None:
        self.model = model

    async def __call__(
        self, request: web.Request, up: aiohttp.ClientResponse, state: Forwarded
    ) -> web.StreamResponse:
        state.error_line = AnthropicRelay().error_event
        if up.status >= 400:
            data = await up.read()
            body = anthropic_shape(up.status, sse.error_message(data, up.status), "upstream_error")
            return web.json_response(body, status=up.status)
        if "text/event-stream" not in up.headers.get("Content-Type", ""):
            value = sse.Event(None, (await up.read()).decode(errors="replace")).json()
            if not isinstance(value, dict):
                raise UpstreamError("the runner's answer was not a JSON object")
            state.usage = value.get("usage") if isinstance(value.get("usage"), dict) else None
            return web.json_response(anthropic_convert.whole(value, self.model))
        response = web.StreamResponse(status=200, headers=dict(sse.SSE_HEADERS))
        await response.prepare(request)
        state.response, state.streaming = response, True
        parser = sse.SSEParser()
        translator = anthropic_convert.StreamTranslator(self.model)
        try:
            async for chunk in runner_chunks(up, state):
                await self._write(response, translator, parser.feed(chunk))
            await self._write(response, translator, parser.close())
            await response.write(_events(translator.finish()))
        except ConnectionResetError as e:
            raise ClientGone(response) from e
        finally:
            usage = translator.usage
            state.usage = {
                "prompt_tokens": usage["input_tokens"],
                "completion_tokens": usage["output_tokens"],
            }
        await response.write_eof()
        return response

    @staticmethod
    async def _write(
        response: web.StreamResponse,
        translator: anthropic_convert.StreamTranslator,
        events: list[sse.Event],
    ) -> None:
        out: list[anthropic_convert.Event] = []
        for event in events:
            value = event.json() if event.data != "[DONE]" else None
            if isinstance(value, dict):
                out += translator.feed(value)
        if out:
            await response.write(_events(out))


def _events(events: list[anthropic_convert.Event]) -> bytes:
    return b"".join(sse.encode(kind, data) for kind, data in events)


def messages_handler(upstream_path: str, *, counting: bool) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        check_backend(request)
        state = request.app[STATE]
        body = await read_body(request, state.config.server.max_body_bytes)
        payload = parse_json_object(body)
        model = await state.catalog.lookup(check_request(payload, counting=counting))
        check_model_backend(state, model, request.match_info.get("backend"))
        backend = state.supervisor.backends.for_format(model.format)
        if backend is not None and "anthropic" not in backend.native_apis:
            if counting:
                raise InvalidRequest(
                    f"count_tokens is not available for model {display_name(model)!r}: its "
                    f"backend ({backend.name}) has no tokenizer endpoint"
                )
            chat = anthropic_convert.chat_body(payload)
            return await serve(
                state,
                request,
                model.id,
                display_name(model),
                "completion",
                "/v1/chat/completions",
                json.dumps(chat).encode(),
                None,
                stream=chat.get("stream") is True,
                relay=ChatAsAnthropicRelay(display_name(model)),
            )
        return await serve(
            state,
            request,
            model.id,
            display_name(model),
            "completion",
            upstream_path,
            body,
            None,
            stream=payload.get("stream") is True and not counting,
            relay=AnthropicRelay(),
        )

    return handler


def add_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        app.router.add_post(
            prefix + "/v1/messages", messages_handler("/v1/messages", counting=False)
        )
        app.router.add_post(
            prefix + "/v1/messages/count_tokens",
            messages_handler("/v1/messages/count_tokens", counting=True),
        )
