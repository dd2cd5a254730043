"""
Ollama's API (``/api/…``) on the store, the supervisor and the one path to the runners.

Generation and embeddings are translated (``ollama_translate``) into OpenAI requests and sent
through ``openai_api.serve`` with an ``OllamaRelay`` that turns the runner's answer into Ollama's
shape: NDJSON lines by default, one object with ``stream: false``.  Model names resolve as
Docker's (``gemma3:270M-Q4_K_M`` is ``ai/gemma3:270M-Q4_K_M``).  ``/api/tags``, ``/api/ps``,
``/api/show``, ``/api/pull``, ``/api/copy`` and ``/api/delete`` answer from the store and the
supervisor.  Errors are Ollama's ``{"error": "…"}`` (an unknown model is 404), rendered by the
middleware.  ``options.num_ctx`` cannot change a running llama-server's context: it is a
per-model setting (``modelrunner configure --context-size``), and a request that asks for
another gets an ``X-Modelrunner-Notice`` header saying so.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from modelrunner import __version__
from modelrunner.distribution.reference import parse_reference
from modelrunner.errors import InvalidRequest, ModelRunnerError, UpstreamError
from modelrunner.runners.args import context_size
from modelrunner.runners.model import Mode
from modelrunner.server.api.ollama import translate as tr
from modelrunner.server.api.openai_api import _keep_alive, check_client_errors, serve
from modelrunner.server.api.progress import ProgressStream
from modelrunner.server.catalog import display_name
from modelrunner.server.middleware import parse_json_object, read_body
from modelrunner.server.relay.answer import RunnerAnswer
from modelrunner.server.relay.proxy import ClientGone, Forwarded, runner_chunks
from modelrunner.server.state import STATE, ServerState

if TYPE_CHECKING:
    from modelrunner.distribution.model import Model

log = structlog.get_logger(__name__)

# The Ollama API level these routes follow (clients compare it with their minimum).
OLLAMA_VERSION = "0.12.0"
NDJSON = "application/x-ndjson"
FOREVER = "2318-01-01T00:00:00Z"  # Ollama's expires_at for a model kept loaded for good


def error_line(error: ModelRunnerError) -> bytes:
    return json.dumps({"error": error.message}).encode() + b"\n"


async def _payload(request: web.Request) -> dict[str, Any]:
    state = request.app[STATE]
    return parse_json_object(await read_body(request, state.config.server.max_body_bytes))


async def _model(state: ServerState, payload: dict[str, Any]) -> Model:
    name = tr.model_name(payload)
    if name is None:
        raise InvalidRequest("request body has no 'model' field")
    return await state.catalog.lookup(name)


class OllamaRelay:
    """The proxy's relay for one Ollama request: the runner's OpenAI answer, in Ollama's shape."""

    def __init__(self, kind: tr.Kind | None, model: str, started_ns: int) -> None:
        self.kind = kind  # None: embeddings
        self.model = model
        self.counters = tr.Counters(started_ns=started_ns)
        self.legacy = False  # /api/embeddings' {"embedding": [...]}
        self.dimensions: int | None = None
        self.headers: dict[str, str] = {}

    async def __call__(
        self, request: web.Request, up: RunnerAnswer, state: Forwarded
    ) -> web.StreamResponse:
        state.error_line = error_line
        if up.status != 200:
            message = tr.upstream_error(await up.read(), up.status)
            status = up.status if up.status >= 400 else 502
            return web.json_response({"error": message}, status=status, headers=self.headers)
        if "text/event-stream" not in up.headers.get("Content-Type", ""):
            return web.json_response(self._whole(await up.read(), state), headers=self.headers)
        return await self._stream(request, up, state)

    def _whole(self, data: bytes, state: Forwarded) -> dict[str, Any]:
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise UpstreamError("the runner's answer was not a JSON object")
        if self.kind is None:
            return self._embeddings(answer)
        translator = tr.StreamTranslator(self.kind, self.model, self.counters)
        out = translator.whole(answer)
        state.usage = self.counters.usage()
        return out

    def _embeddings(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.counters.take(answer)
        data = answer.get("data")
        data = data if isinstance(data, list) else []
        vectors = [
            tr.truncate_embedding(item.get("embedding") or [], self.dimensions)
            for item in sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
            if isinstance(item, dict)
        ]
        if self.legacy:
            return {"embedding": vectors[0] if vectors else []}
        fields = self.counters.fields()
        return {
            "model": self.model,
            "embeddings": vectors,
            "total_duration": fields["total_duration"],
            "load_duration": fields["load_duration"],
            "prompt_eval_count": fields["prompt_eval_count"],
        }

    async def _stream(
        self, request: web.Request, up: RunnerAnswer, state: Forwarded
    ) -> web.StreamResponse:
        translator = tr.StreamTranslator(self.kind or "generate", self.model, self.counters)
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": NDJSON, "X-Accel-Buffering": "no", **self.headers},
        )
        await response.prepare(request)
        state.response, state.streaming = response, True
        try:
            async for chunk in runner_chunks(up, state):
                await _write_lines(response, translator.feed(chunk))
            await _write_lines(response, translator.finish())
        except ConnectionResetError as e:
            raise ClientGone(response) from e
        finally:
            state.usage = self.counters.usage()
        await response.write_eof()
        return response


async def _write_lines(response: web.StreamResponse, lines: list[dict[str, Any]]) -> None:
    if lines:
        await response.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def _num_ctx_notice(state: ServerState, model: Model, payload: dict[str, Any]) -> dict[str, str]:
    options = payload.get("options")
    asked = options.get("num_ctx") if isinstance(options, dict) else None
    if not isinstance(asked, int) or isinstance(asked, bool):
        return {}
    runs = context_size(state.catalog.files(model), state.config.runners)
    if asked == runs:
        return {}
    return {
        "X-Modelrunner-Notice": (
            f"options.num_ctx={asked} ignored: this model runs with a context of {runs} tokens, "
            f"a per-model setting (modelrunner configure --context-size N {display_name(model)})"
        )
    }


async def _to_runner(
    state: ServerState,
    request: web.Request,
    model: Model,
    mode: Mode,
    path: str = "",
    body: dict[str, Any] | None = None,
    keep_alive_s: float | None = None,
    relay: OllamaRelay | None = None,
) -> web.StreamResponse:
    """``openai_api.serve`` for one translated request; no *body*: only load the runner."""
    stream = bool(body and body.get("stream"))
    data = json.dumps(body).encode() if body is not None else b""
    return await serve(
        state,
        request,
        model.id,
        display_name(model),
        mode,
        path,
        data,
        keep_alive_s,
        body is None,
        stream=stream,
        relay=relay,
    )


async def _generate(request: web.Request, kind: tr.Kind) -> web.StreamResponse:
    started = time.monotonic_ns()
    state = request.app[STATE]
    payload = await _payload(request)
    model = await _model(state, payload)
    name = str(tr.model_name(payload))
    keep_alive_s = _keep_alive(payload.get("keep_alive"))
    if kind == "chat":
        messages = payload.get("messages")
        empty = messages is None or messages == []
        path = "/v1/chat/completions"
        body = tr.chat_request({**payload, "messages": messages or []}, name)
    else:
        prompt = payload.get("prompt")
        empty = prompt in (None, "") and not payload.get("images")
        path, body = tr.generate_request({**payload, "prompt": prompt or ""}, name)
    check_client_errors(body, "completion", has_projector=model.mmproj_path is not None)
    if empty:  # Ollama's way to load (or, with keep_alive 0, unload) a model
        return await _load_only(state, request, model, name, kind, keep_alive_s)
    relay = OllamaRelay(kind, name, started)
    relay.headers = _num_ctx_notice(state, model, payload)
    return await _to_runner(state, request, model, "completion", path, body, keep_alive_s, relay)


async def _load_only(
    state: ServerState,
    request: web.Request,
    model: Model,
    name: str,
    kind: tr.Kind,
    keep_alive_s: float | None,
) -> web.Response:
    reason = "load"
    if keep_alive_s == 0:
        await state.supervisor.unload([model.id])
        reason = "unload"
    else:
        await _to_runner(state, request, model, "completion", keep_alive_s=keep_alive_s)
    line = tr.StreamTranslator(kind, name, tr.Counters(started_ns=time.monotonic_ns()))
    out = line.line("", done=True)
    return web.json_response({**out, "done_reason": reason})


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "generate")


async def _embed(request: web.Request, legacy: bool) -> web.StreamResponse:
    started = time.monotonic_ns()
    state = request.app[STATE]
    payload = await _payload(request)
    model = await _model(state, payload)
    name = str(tr.model_name(payload))
    inputs = tr.embed_inputs(payload, legacy)
    keep_alive_s = _keep_alive(payload.get("keep_alive"))
    relay = OllamaRelay(None, name, started)
    relay.legacy = legacy
    relay.dimensions = None if legacy else tr.embed_dimensions(payload)
    mode: Mode = "embedding"
    if not inputs:
        await _to_runner(state, request, model, mode, keep_alive_s=keep_alive_s)
        return web.json_response({"embedding": []} if legacy else {"model": name, "embeddings": []})
    body = {"model": name, "input": inputs}
    return await _to_runner(
        state, request, model, mode, "/v1/embeddings", body, keep_alive_s, relay
    )


async def embed(request: web.Request) -> web.StreamResponse:
    return await _embed(request, legacy=False)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _embed(request, legacy=True)


async def version(request: web.Request) -> web.Response:
    del request
    return web.json_response({"version": OLLAMA_VERSION, "modelrunner": __version__})


async def tags(request: web.Request) -> web.Response:
    state = request.app[STATE]
    out: list[dict[str, Any]] = []
    for m in await state.store.list_models():
        out += tr.tag_entries(m.id, m.tags, m.created, m.size_bytes, m.config)
    return web.json_response({"models": out})


async def ps(request: web.Request) -> web.Response:
    """Running models, one entry per model (its runners' modes merged)."""
    state = request.app[STATE]
    rows = await state.supervisor.status()
    gpu = await _on_gpu(state)
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        try:
            model = await state.catalog.lookup(row.model)
        except ModelRunnerError:
            continue  # removed while running: it is on its way out
        entry = merged.get(row.model)
        if entry is None:
            entry = merged[row.model] = _ps_entry(state, model)
        size = row.rss_bytes or model.estimated_bytes
        entry["size"] += size
        entry["size_vram"] += size if gpu else 0
        entry["_until"].append(FOREVER if row.pinned else row.until)
    out = []
    for entry in merged.values():
        untils = entry.pop("_until")
        if FOREVER in untils:
            entry["expires_at"] = FOREVER
        elif untils and all(isinstance(u, float | int) for u in untils):
            entry["expires_at"] = tr.iso_of(max(untils))
        out.append(entry)
    return web.json_response({"models": out})


def _ps_entry(state: ServerState, model: Model) -> dict[str, Any]:
    name = display_name(model)
    return {
        "name": name,
        "model": name,
        "size": 0,
        "digest": model.id.removeprefix("sha256:"),
        "details": tr.details(model.config),
        "size_vram": 0,
        "context_length": context_size(state.catalog.files(model), state.config.runners),
        "_until": [],
    }


async def _on_gpu(state: ServerState) -> bool:
    try:
        info = await state.supervisor.binary()
    except ModelRunnerError:
        return False
    return info.backend not in ("cpu", "")


async def show(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = await _model(state, await _payload(request))
    config = model.config
    gguf = tr.obj(config.get("gguf"))
    template = str(gguf.get("tokenizer.chat_template") or "")
    capabilities = ["completion", "embedding"]
    if model.mmproj_path is not None:
        capabilities.append("vision")
    if "tools" in template:
        capabilities.append("tools")
    settings = state.catalog.effective_settings(model)
    parameters = " ".join(settings.runtime_flags)
    return web.json_response(
        {
            "modelfile": f"# modelrunner: {display_name(model)}\nFROM {display_name(model)}\n",
            "parameters": parameters,
            "template": template,
            "details": tr.details(config),
            "model_info": tr.model_info(config),
            "capabilities": capabilities,
            "modified_at": tr.iso_of(model.created),
        }
    )


class OllamaPullStream(ProgressStream):
    """The store's pull progress as Ollama's lines: ``pulling manifest``, one
    ``pulling <digest>`` line per update (``digest``, ``total``, ``completed``), then
    ``verifying sha256 digest``, ``writing manifest`` and ``success``; a failure after the
    stream began is an ``{"error": …}`` line."""

    def __init__(self, request: web.Request) -> None:
        super().__init__(request, "pull")
        self.json = True
        self.started = False

    async def _start(self) -> web.StreamResponse:
        if self.response is None:
            self.response = web.StreamResponse(
                status=200, headers={"Content-Type": NDJSON, "X-Accel-Buffering": "no"}
            )
            await self.response.prepare(self.request)
        return self.response

    async def write(self, line: dict[str, Any]) -> None:
        response = await self._start()
        out: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            out.append({"status": "pulling manifest"})
        kind = line.get("type")
        layer = tr.obj(line.get("layer"))
        if kind == "progress" and layer.get("id"):
            digest = str(layer["id"])
            out.append(
                {
                    "status": f"pulling {digest.removeprefix('sha256:')[:12]}",
                    "digest": digest,
                    "total": layer.get("size", 0),
                    "completed": layer.get("current", 0),
                }
            )
        elif kind == "success":
            self.sent_final = True
            out += [
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]
        elif kind == "error":
            self.sent_final = True
            out.append({"error": str(line.get("message", "")).removeprefix("Error: ")})
        elif kind == "warning":
            out.append({"status": str(line.get("message", ""))})
        await _write_lines(response, out)


async def pull(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    payload = await _payload(request)
    name = tr.model_name(payload)
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("'model' must be a model reference such as ai/smollm2")
    parse_reference(name)  # 400 before anything streams
    stream = tr.wants_stream(payload)

    async def operation(progress: Any) -> Any:
        try:
            return await state.store.pull(name, progress=progress)
        finally:
            state.catalog.invalidate()

    if not stream:
        await operation(None)
        return web.json_response({"status": "success"})
    return await OllamaPullStream(request).run(operation, lambda _model: "success")


async def copy(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payload = await _payload(request)
    source, destination = payload.get("source"), payload.get("destination")
    if not isinstance(destination, str) or not destination.strip():
        raise InvalidRequest("'destination' must be a model reference such as ai/mine:v1")
    model = await state.catalog.lookup(source)  # 400 for a non-string, 404 if absent
    parse_reference(destination)
    try:
        await state.store.tag(model.id if source == model.id else str(source), destination)
    finally:
        state.catalog.invalidate()
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payload = await _payload(request)
    model = await _model(state, payload)
    name = str(tr.model_name(payload))
    try:
        result = await state.store.remove(name, in_use=state.supervisor.in_use)
    finally:
        state.catalog.invalidate()
    if result.deleted:
        await state.supervisor.unload([model.id])
        await state.settings.remove([model.id])
    return web.Response(status=200)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/version", version)
    r.add_get("/api/tags", tags)
    r.add_get("/api/ps", ps)
    r.add_post("/api/show", show)
    r.add_post("/api/chat", chat)
    r.add_post("/api/generate", generate)
    r.add_post("/api/embed", embed)
    r.add_post("/api/embeddings", embeddings)
    r.add_post("/api/pull", pull)
    r.add_post("/api/copy", copy)
    r.add_delete("/api/delete", delete)
