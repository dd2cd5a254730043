"""
OpenAI's Responses API: ``POST .../responses``, ``GET .../responses/{id}``,
``GET .../responses/{id}/input_items`` and ``DELETE .../responses/{id}``.

Under ``/v1``, ``/engines/v1`` and ``/engines/{backend}/v1`` (as the OpenAI routes) plus Docker's
``/responses`` and ``/engines/responses``.  Generation is translated onto the model's chat
completions (``responses_convert`` says why not llama-server's own ``/v1/responses``: tools,
structured output and the stream events the ``openai`` package needs) and goes through
``openai_api.serve()``, so lookup, load on demand, admission and metrics are the OpenAI routes'.
A forced function (``tool_choice: "required"`` or ``{"type": "function", "name": ...}``) is held
to a call and its text read back as one (``forced_tools``): a ``function_call`` output item.
Answers are stored (``responses_store``, on disk under the daemon's home) unless
``store: false``; ``previous_response_id`` replays the stored chain as earlier turns.  A
streamed answer is stored before its ``response.completed`` is sent, so a client that retrieves
it right after the stream finds it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from modelrunner.errors import InvalidRequest, ModelRunnerError, NotFound, StoreError
from modelrunner.server.api.forced_tools import ChatCall
from modelrunner.server.api.openai_api import check_backend, check_model_backend, forcing, serve
from modelrunner.server.api.responses import convert
from modelrunner.server.api.responses.store import ResponseStore
from modelrunner.server.api.responses.stream import Event, StreamTranslator
from modelrunner.server.catalog import display_name
from modelrunner.server.middleware import error_body, parse_json_object, read_body
from modelrunner.server.relay import sse
from modelrunner.server.relay.answer import RunnerAnswer
from modelrunner.server.relay.proxy import Forwarded, relay_headers, runner_chunks
from modelrunner.server.state import STATE

log = structlog.get_logger(__name__)

PREFIXES = (
    "/engines/{backend}/v1/responses",
    "/engines/v1/responses",
    "/v1/responses",
    "/engines/responses",
    "/responses",
)
STORE = web.AppKey("responses_store", ResponseStore)
MAX_CHAIN = 10_000  # turns replayed at most (a cycle cannot happen: ids are never reused)


def _store(request: web.Request) -> ResponseStore:
    return request.app[STORE]


def _not_found(response_id: str) -> NotFound:
    return NotFound(
        f"response {response_id!r} not found: it was never stored (store: false), "
        "was deleted, or is older than server.responses_ttl_s"
    )


async def history(store: ResponseStore, response_id: str) -> list[dict[str, Any]]:
    """The items of every earlier turn, oldest first, ending with *response_id*'s output."""
    turns: list[dict[str, Any]] = []
    current: Any = response_id
    while isinstance(current, str) and current and len(turns) < MAX_CHAIN:
        record = await store.get(current)
        if record is None:
            if current == response_id:
                raise NotFound(f"previous_response_id: {_not_found(response_id).message}")
            break  # an earlier turn expired: the conversation starts after it
        turns.append(record)
        current = record.get("response", {}).get("previous_response_id")
    items: list[dict[str, Any]] = []
    for record in reversed(turns):
        items += record.get("input_items") or []
        items += record.get("response", {}).get("output") or []
    return items


class ResponsesRelay:
    """Chat completion (JSON or SSE) in, Responses object or events out; stores the result."""

    def __init__(
        self,
        store: ResponseStore,
        request: convert.CreateRequest,
        response: dict[str, Any],
        call: ChatCall | None = None,
    ) -> None:
        self.store = store
        self.request = request
        self.translator = StreamTranslator(response)
        self.started = False
        self.call = call  # a forced function: the chat answer's text read as its call

    async def _save(self, response: dict[str, Any]) -> None:
        if not self.request.store:
            return
        record = {"response": response, "input_items": self.request.input_items}
        try:
            await self.store.save(response["id"], record)
        except StoreError as e:
            log.error(  # noqa: TRY400 - the message says it all; no traceback
                "responses.store_failed", id=response["id"], error=e.message
            )

    async def __call__(
        self, request: web.Request, up: RunnerAnswer, state: Forwarded
    ) -> web.StreamResponse:
        state.error_line = self.error_event
        if up.status >= 400:
            data = await up.read()
            body = error_body(
                request.path, up.status, sse.error_message(data, up.status), "upstream_error"
            )
            return web.json_response(body, status=up.status)
        if not self.request.stream:
            completion = sse.Event(None, (await up.read()).decode(errors="replace")).json()
            if isinstance(completion, dict) and isinstance(completion.get("usage"), dict):
                state.usage = completion["usage"]
            if self.call is not None:
                completion = self.call.whole(completion)
            done = convert.from_chat_completion(self.translator.response, completion)
            await self._save(done)
            return web.json_response(done)
        headers = relay_headers(up)
        headers.update(sse.SSE_HEADERS)
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        state.response, state.streaming = response, True
        self.started = True
        await self._send(response, self.translator.start())
        async for piece in self._chunks(up, state):
            if isinstance(piece.get("error"), dict):
                error = piece["error"]
                message = str(error.get("message") or "the runner failed")
                await self._send(response, self.translator.failed(message, "upstream_error"))
                await response.write_eof()
                return response
            if isinstance(piece.get("usage"), dict):
                state.usage = piece["usage"]
            await self._send(response, self.translator.chunk(piece))
        events, done = self.translator.finish()
        await self._send(response, events)
        await self._save(done)
        await self._send(response, [self.translator.completed()])
        await response.write_eof()
        return response

    async def _chunks(self, up: RunnerAnswer, state: Forwarded) -> AsyncIterator[dict[str, Any]]:
        parser = sse.SSEParser()
        async for chunk in runner_chunks(up, state):
            for event in parser.feed(chunk):
                value = event.json()
                if isinstance(value, dict):
                    yield value if self.call is None else self.call.chunk(value)
        for event in parser.close():
            value = event.json()
            if isinstance(value, dict):
                yield value if self.call is None else self.call.chunk(value)

    @staticmethod
    async def _send(response: web.StreamResponse, events: list[Event]) -> None:
        if events:
            await sse.write(response, b"".join(sse.encode(kind, data) for kind, data in events))

    def error_event(self, error: ModelRunnerError) -> bytes:
        events = self.translator.failed(error.message, error.code)
        return b"".join(sse.encode(kind, data) for kind, data in events)


async def create(request: web.Request) -> web.StreamResponse:
    check_backend(request)
    state = request.app[STATE]
    body = await read_body(request, state.config.server.max_body_bytes)
    parsed = convert.parse_create(parse_json_object(body))
    model = await state.catalog.lookup(parsed.model)
    check_model_backend(state, model, request.match_info.get("backend"))
    earlier: list[dict[str, Any]] = []
    if parsed.previous_response_id is not None:
        earlier = await history(_store(request), parsed.previous_response_id)
    name = display_name(model)
    response = convert.base_response(convert.new_id("resp"), parsed, name)
    chat = convert.chat_body(parsed, earlier, name)
    call = forcing(state, model, chat.get("tools"), chat.get("tool_choice"))
    if call is not None:
        chat = call.constrain(chat)
    return await serve(
        state,
        request,
        model.id,
        name,
        "completion",
        "/v1/chat/completions",
        json.dumps(chat).encode(),
        None,
        stream=parsed.stream,
        relay=ResponsesRelay(
            _store(request), parsed, response, ChatCall(call) if call is not None else None
        ),
    )


async def _record(request: web.Request) -> dict[str, Any]:
    check_backend(request)
    response_id = request.match_info["id"]
    record = await _store(request).get(response_id)
    if record is None:
        raise _not_found(response_id)
    return record


async def retrieve(request: web.Request) -> web.Response:
    record = await _record(request)
    return web.json_response(record["response"])


def _page_args(request: web.Request) -> tuple[int, str, str | None]:
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit: must be an integer from 1 to 100")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order: must be asc or desc")
    return limit, order, query.get("after")


async def input_items(request: web.Request) -> web.Response:
    """The items that went in, newest first unless ``order=asc``; ``after`` pages on."""
    limit, order, after = _page_args(request)
    items = list((await _record(request)).get("input_items") or [])
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


async def delete(request: web.Request) -> web.Response:
    check_backend(request)
    response_id = request.match_info["id"]
    if not await _store(request).delete(response_id):
        raise _not_found(response_id)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


def add_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        app.router.add_post(prefix, create)
        app.router.add_get(prefix + "/{id}", retrieve)
        app.router.add_get(prefix + "/{id}/input_items", input_items)
        app.router.add_delete(prefix + "/{id}", delete)

    server = app[STATE].config.server
    store = ResponseStore(
        app[STATE].config.home / "responses",
        max_count=server.responses_max_count,
        max_bytes=server.responses_max_bytes,
        ttl_s=server.responses_ttl_s,
    )
    app[STORE] = store

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await store.open()  # what an earlier daemon stored
        yield

    app.cleanup_ctx.append(lifecycle)
