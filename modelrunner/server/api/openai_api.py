"""
OpenAI-compatible routes: inference pass-through and the model list.

``POST .../v1/chat/completions|completions|embeddings`` and ``.../rerank|score`` under
``/engines/{backend}``, ``/engines`` and ``/`` (Docker's ``/v1`` alias).  Only ``model`` is read
from the body (plus Ollama's optional ``keep_alive``, and the two client errors llama-server
answers with a 500: see ``check_client_errors``); the bytes go to that model's runner as they
came.  The one exception: a chat request that forces a tool call (``tool_choice: "required"`` or
a named function), whose body is held to the call and whose answer is rewritten into
``tool_calls`` (``forced_tools``; the fast lane hands such a request to aiohttp's lane); on a
backend that takes no grammar (MLX) it is a 400 (``forcing``).
``GET .../v1/models[/{name}]`` answers from the store, one entry per model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from modelrunner.errors import InvalidRequest, ModelRunnerError
from modelrunner.runners.model import Mode
from modelrunner.server.api.forced_tools import ChatCall, Forced, forced
from modelrunner.server.catalog import display_name
from modelrunner.server.middleware import parse_json_object, read_body
from modelrunner.server.relay import inference, sse
from modelrunner.server.relay.answer import RunnerAnswer
from modelrunner.server.relay.proxy import (
    ClientGone,
    Forwarded,
    Relay,
    UsageScan,
    relay_headers,
    runner_chunks,
    usage_of_whole,
    write_stream_error,
)
from modelrunner.server.settings import parse_keep_alive
from modelrunner.server.state import STATE, ServerState

if TYPE_CHECKING:
    from modelrunner.distribution.model import Model
    from modelrunner.runners.supervisor import Runner

BACKENDS = ("llama.cpp", "mlx")  # runners/backend.py's names: /engines/<backend>/v1/…
PREFIXES = ("/engines/{backend}", "/engines", "")
CHAT = "/v1/chat/completions"

# (path suffix, mode, path sent to llama-server)
INFERENCE: tuple[tuple[str, Mode, str], ...] = (
    ("/v1/chat/completions", "completion", CHAT),
    ("/v1/completions", "completion", "/v1/completions"),
    ("/v1/embeddings", "embedding", "/v1/embeddings"),
    ("/rerank", "reranking", "/v1/rerank"),
    ("/score", "reranking", "/v1/rerank"),
    # Not Docker's, but where a client with base_url ".../v1/" (and llama-server) puts them.
    ("/v1/rerank", "reranking", "/v1/rerank"),
    ("/v1/score", "reranking", "/v1/rerank"),
)


def check_backend(request: web.Request) -> None:
    backend = request.match_info.get("backend")
    if backend is not None and backend not in BACKENDS:
        raise InvalidRequest(f"unknown backend {backend!r}; the backends are {', '.join(BACKENDS)}")


def model_backend(state: ServerState, model: Model) -> str:
    """The backend that runs *model* (by its format), or "" when none does."""
    backend = state.supervisor.backends.for_format(model.format)
    return backend.name if backend is not None else ""


def check_model_backend(state: ServerState, model: Model, route_backend: str | None) -> None:
    """``/engines/<backend>/…`` must name the model's own backend (``/engines/v1`` picks it)."""
    if route_backend is None:
        return
    runs_on = model_backend(state, model)
    if runs_on and route_backend != runs_on:
        raise InvalidRequest(
            f"model {display_name(model)!r} ({model.format}) runs on the {runs_on} backend, not "
            f"{route_backend}; use /engines/{runs_on}/v1/… or /engines/v1/… (picks by model)"
        )


def forcing(state: ServerState, model: Model, tools: Any, tool_choice: Any) -> Forced | None:
    """The forced tools of a chat request for *model* (``forced_tools.forced``); a 400 on a
    backend whose server takes no grammar, as nothing there could hold the answer to a call."""
    call = forced(tools, tool_choice)
    backend = state.supervisor.backends.for_format(model.format)
    if call is not None and backend is not None and not backend.grammar:
        raise InvalidRequest(
            f"tool_choice: model {display_name(model)!r} runs on the {backend.name} backend, "
            "which cannot force a tool call; leave tool_choice at auto"
        )
    return call


def _keep_alive(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest("keep_alive must be a duration string or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return parse_keep_alive(value)
    raise InvalidRequest("keep_alive must be a duration string or a number of seconds")


MEDIA_PARTS = {"image_url", "input_audio"}


def _token_or_text(item: Any) -> bool:
    if isinstance(item, list):
        return all(isinstance(t, int) and not isinstance(t, bool) for t in item)
    return isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool))


def _tool_ok(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def _part_ok(part: Any, has_projector: bool) -> bool:
    if not isinstance(part, dict):
        return False
    if part.get("type") == "text":
        return isinstance(part.get("text"), str)
    return has_projector or part.get("type") not in MEDIA_PARTS


def check_client_errors(payload: dict[str, Any], mode: Mode, has_projector: bool) -> None:
    """400 for what llama-server would answer with a 500 although the client is at fault:
    ``tools`` that are not function definitions, an embeddings ``input`` that is neither text
    nor tokens, content parts that are not objects (or text parts without text), and image/audio
    parts for a model without a projector."""
    tools = payload.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(map(_tool_ok, tools))):
        raise InvalidRequest(
            "'tools' must be an array of tool definitions "
            '({"type": "function", "function": {"name": ...}})'
        )
    for key in ("input", "content") if mode == "embedding" else ():
        value = payload.get(key)
        if key in payload and not (
            isinstance(value, str) or (isinstance(value, list) and all(map(_token_or_text, value)))
        ):
            raise InvalidRequest(
                f"{key!r} must be a string, a list of strings, or token ids (a list of integers "
                "or of lists of integers)"
            )
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not _part_ok(part, has_projector):
                if isinstance(part, dict) and part.get("type") in MEDIA_PARTS:
                    raise InvalidRequest(
                        "this model takes text only (it has no multimodal projector): "
                        "remove the image/audio parts"
                    )
                raise InvalidRequest(
                    "each content part must be an object with a type "
                    '(a text part: {"type": "text", "text": "..."})'
                )


@dataclass(frozen=True, slots=True)
class Inference:
    """What the pass-through reads of an OpenAI inference request."""

    model: Model
    name: str
    keep_alive_s: float | None
    stream: bool
    preload_only: bool
    payload: dict[str, Any]
    forced: Forced | None  # a chat request's forced tool choice: its answer is translated


async def read_inference(
    state: ServerState,
    body: bytes,
    mode: Mode,
    headers: Mapping[str, str],
    backend: str | None = None,
    *,
    chat: bool,
) -> Inference:
    """The request's model (looked up, on the route's *backend* if it names one), its client
    errors refused, and its few options; *chat*: it goes to the runner's chat completions
    (where a tool call can be forced)."""
    payload = parse_json_object(body)
    if "model" not in payload:
        raise InvalidRequest("request body has no 'model' field")
    ref = payload["model"]
    model = state.catalog.cached(ref) or await state.catalog.lookup(ref)
    check_model_backend(state, model, backend)
    check_client_errors(payload, mode, has_projector=model.mmproj_path is not None)
    return Inference(
        model,
        display_name(model),
        _keep_alive(payload.get("keep_alive")),
        payload.get("stream") is True,
        headers.get("X-Preload-Only", "").lower() == "true",
        payload,
        forcing(state, model, payload.get("tools"), payload["tool_choice"])
        if chat and "tool_choice" in payload
        else None,
    )


def inference_handler(mode: Mode, upstream_path: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        check_backend(request)
        state = request.app[STATE]
        body = await read_body(request, state.config.server.max_body_bytes)
        got = await read_inference(
            state,
            body,
            mode,
            request.headers,
            request.match_info.get("backend"),
            chat=upstream_path == CHAT,
        )
        relay: Relay | None = None
        if got.forced is not None:
            body = json.dumps(got.forced.constrain(got.payload)).encode()
            relay = ForcedCallRelay(got.forced)
        return await serve(
            state,
            request,
            got.model.id,
            got.name,
            mode,
            upstream_path,
            body,
            got.keep_alive_s,
            got.preload_only,
            stream=got.stream,
            relay=relay,
            payload=got.payload if relay is None else None,
        )

    return handler


class ForcedCallRelay:
    """The runner's answer to a forced tool choice, its text as ``tool_calls`` (``ChatCall``);
    errors and ``[DONE]`` pass as they came."""

    def __init__(self, call: Forced) -> None:
        self.call = ChatCall(call)

    async def __call__(
        self, request: web.Request, up: RunnerAnswer, state: Forwarded
    ) -> web.StreamResponse:
        headers = relay_headers(up)
        if up.status != 200 or "text/event-stream" not in up.headers.get("Content-Type", ""):
            data = await up.read()
            usage_of_whole(state, up.status, data)
            value = sse.Event(None, data.decode(errors="replace")).json()
            if up.status == 200 and isinstance(value, dict):
                data = json.dumps(self.call.whole(value)).encode()
            return web.Response(status=up.status, body=data, headers=headers)
        headers.update(sse.SSE_HEADERS)
        response = web.StreamResponse(status=up.status, headers=headers)
        await response.prepare(request)
        state.response, state.streaming = response, True
        parser, scan = sse.SSEParser(), UsageScan(state)
        async for chunk in runner_chunks(up, state):
            scan.feed(chunk)
            out = b"".join(map(self._event, parser.feed(chunk)))
            if out:
                await sse.write(response, out)
        scan.close()
        tail = b"".join(map(self._event, parser.close()))
        if tail:
            await sse.write(response, tail)
        await response.write_eof()
        return response

    def _event(self, event: sse.Event) -> bytes:
        value = event.json()
        if isinstance(value, dict) and "choices" in value:
            return sse.encode(event.name, self.call.chunk(value))
        return sse.encode_raw(event.name, event.data)


class AiohttpLane:
    """``inference.pass_through``'s lane for an aiohttp request: the runner reached through
    the aiohttp upstream pool, the answer passed through or translated by *relay*."""

    # OSError: the runner's socket refused or its connection broke (upstream.UpstreamClosed);
    # aiohttp.ClientError: a client write that failed as the client left.
    upstream_errors: tuple[type[BaseException], ...] = (
        OSError,
        aiohttp.ClientError,
        TimeoutError,
        ClientGone,
    )

    def __init__(
        self,
        state: ServerState,
        request: web.Request,
        upstream_path: str,
        body: bytes,
        stream: bool,
        relay: Relay | None,
        name: str,
    ) -> None:
        self._state = state
        self._name = name  # the model's display name, for the errors
        self._request = request
        self._path = upstream_path
        self._body = body
        self._stream = stream
        self._relay = relay
        self._forwarded: Forwarded | None = None

    @property
    def upstream_path(self) -> str:
        return self._path

    def started(self) -> bool:
        return self._forwarded is not None and self._forwarded.response is not None

    async def forward(self, runner: Runner, forwarded: Forwarded) -> web.StreamResponse:
        self._forwarded = forwarded
        response = await self._state.upstream.forward(
            self._request,
            runner.socket_path,
            self._path,
            self._body if forwarded.upstream_body is None else forwarded.upstream_body,
            forwarded,
            stream=self._stream,
            relay=self._relay,
            model=self._name,
        )
        if isinstance(response, web.Response) and isinstance(response.body, bytes | bytearray):
            forwarded.answer = (response.status, bytes(response.body))
        return response

    def preloaded(self) -> web.StreamResponse:
        return web.Response(status=200)

    def gone(self, error: BaseException) -> web.StreamResponse | None:
        return error.response if isinstance(error, ClientGone) else None

    async def end_with(self, forwarded: Forwarded, error: ModelRunnerError) -> web.StreamResponse:
        await write_stream_error(forwarded, error)
        return forwarded.response or web.Response(status=500)  # started: never None


async def serve(
    state: ServerState,
    request: web.Request,
    model_id: str,
    name: str,
    mode: Mode,
    upstream_path: str,
    body: bytes,
    keep_alive_s: float | None,
    preload_only: bool = False,
    *,
    stream: bool = False,
    relay: Relay | None = None,
    payload: Mapping[str, Any] | None = None,
) -> web.StreamResponse:
    """Pass an aiohttp request through to the model's runner (or through *relay*, another
    API family's translation): ``inference.pass_through`` on aiohttp's lane.  *payload*: *body*
    already parsed, if the caller has it."""
    lane = AiohttpLane(state, request, upstream_path, body, stream, relay, name)
    return await inference.pass_through(
        state,
        request,
        model_id,
        name,
        mode,
        body,
        keep_alive_s,
        lane,
        Forwarded(payload=payload),
        preload_only=preload_only,
    )


def _openai_model(item: dict[str, Any]) -> dict[str, Any]:
    tags = item.get("tags") or []
    out: dict[str, Any] = {
        "id": tags[0] if tags else item["id"],
        "object": "model",
        "created": item.get("created", 0),
        "owned_by": "docker",
    }
    config = item.get("config")
    if isinstance(config, dict):
        out["dmr"] = {
            k: config[k]
            for k in ("architecture", "parameters", "quantization", "size")
            if k in config
        }
        if "context_size" in config:
            out["dmr"]["context_window"] = config["context_size"]
    return out


async def list_models(request: web.Request) -> web.Response:
    check_backend(request)
    state = request.app[STATE]
    models = await state.store.list_models()
    data = [_openai_model(m.to_api()) for m in models]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    check_backend(request)
    state = request.app[STATE]
    model = await state.catalog.lookup(request.match_info["name"])
    return web.json_response(_openai_model(model.to_api()))


def add_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        for suffix, mode, upstream in INFERENCE:
            app.router.add_post(prefix + suffix, inference_handler(mode, upstream))
        app.router.add_get(prefix + "/v1/models", list_models)
        app.router.add_get(prefix + "/v1/models/{name:.+}", get_model)
