"""
Docker Model Runner's model management routes (``/models…``) on the store.

Wire shapes are Docker's (``/models`` items from ``Model.to_api()``, the delete result list, the
tag answer, the progress stream); errors are ``{"error": "…"}`` with Docker's statuses.
``GET /models/{name}`` adds what Docker cannot show: the effective settings and the exact
llama-server argv the next spawn will use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from modelrunner.distribution.reference import parse_reference
from modelrunner.errors import BinaryNotFound, InvalidRequest, ModelRunnerError
from modelrunner.runners.args import build_argv
from modelrunner.runners.model import MODES, Mode
from modelrunner.server.api.progress import ProgressStream
from modelrunner.server.catalog import display_name
from modelrunner.server.kvcache_hooks import forget_models
from modelrunner.server.middleware import (
    BODY_TIMEOUT_S,
    RequestTimeout,
    parse_json_object,
    read_body,
)
from modelrunner.server.state import STATE

log = structlog.get_logger(__name__)

_TAR_TYPES = ("application/x-tar", "application/octet-stream", "application/tar", "")


def _flag(request: web.Request, name: str) -> bool:
    """Go's query booleans: ``?force`` alone or ``=true/1/t`` means true."""
    if name not in request.query:
        return False
    value = request.query[name].strip().lower()
    if value in ("", "1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    raise InvalidRequest(f"query parameter {name!r} must be a boolean, not {value!r}")


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = await state.store.list_models()
    return web.json_response([m.to_api() for m in models])


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]
    if _flag(request, "remote"):
        from modelrunner.server.api.remote import remote_model

        return web.json_response(await remote_model(state.config.store, name))
    model = await state.catalog.lookup(name)
    body = model.to_api()
    effective = state.catalog.effective_settings(model)
    settings = dataclasses.asdict(effective)
    settings["runtime_flags"] = list(effective.runtime_flags)
    body["settings"] = settings
    argv: dict[str, list[str]] = {}
    if model.gguf_paths:  # another tool's artifact (no GGUF) is listed, but nothing runs it
        files = state.catalog.files(model)
        supported: frozenset[str] | None = None
        try:
            info = await state.supervisor.binary()
            binary, supported = info.path, info.flags
        except BinaryNotFound:
            binary = Path("llama-server")
        runners = state.config.runners
        sock = runners.run_dir / "runner.sock"
        for mode in MODES:
            try:
                argv[mode] = build_argv(binary, files, mode, sock, runners, supported=supported)
            except InvalidRequest as e:
                body["settings_error"] = e.message
    body["llama_server_args"] = argv
    return web.json_response(body)


async def create(request: web.Request) -> web.StreamResponse:
    """Pull: Docker's progress lines, then a success or error line."""
    state = request.app[STATE]
    payload = parse_json_object(await read_body(request, state.config.server.max_body_bytes))
    source = payload.get("from")
    if not isinstance(source, str) or not source.strip():
        raise InvalidRequest("'from' must be a model reference such as ai/smollm2")
    if re.fullmatch(r"(sha256:)?[0-9a-fA-F]{12,64}", source.strip()):
        raise InvalidRequest(f"cannot pull {source!r}: pull takes a reference such as ai/smollm2")
    parse_reference(source)  # InvalidReference (400) before anything streams
    stream = ProgressStream(request, "pull", model=source)

    async def operation(progress: Any) -> Any:
        try:
            return await state.store.pull(source, progress=progress)
        finally:
            state.catalog.invalidate()

    return await stream.run(operation, lambda _model: "Model pulled successfully")


async def push(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    await read_body(request, state.config.server.max_body_bytes)  # optional bearer-token: unused
    name = request.match_info["name"]
    model = await state.catalog.lookup(name)  # 404 before streaming
    del model
    stream = ProgressStream(request, "push", model=name)
    return await stream.run(
        lambda progress: state.store.push(name, progress=progress),
        lambda _none: "Model pushed successfully",
    )


async def load_archive(request: web.Request) -> web.StreamResponse:
    """``docker model package``'s tar upload; the model is left untagged unless ``?tag=``."""
    state = request.app[STATE]
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype not in _TAR_TYPES:
        raise web.HTTPUnsupportedMediaType(text="the body must be a tar (application/x-tar)")
    tag = request.query.get("tag") or None
    if tag is not None:
        parse_reference(tag)

    timeout_s = request.app.get(BODY_TIMEOUT_S, 30.0) or None

    async def chunks() -> Any:
        # The body streams (no read_body): each read waits at most server.body_timeout_s.
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    chunk = await request.content.read(1 << 20)
            except TimeoutError:
                raise RequestTimeout(
                    f"the tar upload stalled for {timeout_s:g}s (server.body_timeout_s)"
                ) from None
            if not chunk:
                return
            yield chunk

    stream = ProgressStream(request, "pull", model=tag)

    async def operation(progress: Any) -> Any:
        try:
            return await state.store.load_archive(chunks(), tag, progress)
        finally:
            state.catalog.invalidate()

    return await stream.run(operation, lambda model: f"Model loaded successfully: {model.id}")


async def delete(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]
    force = _flag(request, "force")
    model = await state.catalog.lookup(name)
    try:
        result = await state.store.remove(name, force=force, in_use=state.supervisor.in_use)
    finally:
        state.catalog.invalidate()
    if result.deleted:
        await state.supervisor.unload([model.id])
        await forget_models(state.supervisor, [model.id])  # after the unload's save
        await state.settings.remove([model.id])
    return web.json_response(result.to_api())


async def purge(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.supervisor.unload(None)
    try:
        await state.store.purge()
    finally:
        state.catalog.invalidate()
    await forget_models(state.supervisor, None)
    await state.settings.remove(None)
    return web.Response(status=200)


async def tag(request: web.Request) -> web.Response:
    state = request.app[STATE]
    repo, tag_ = request.query.get("repo", ""), request.query.get("tag", "")
    if not repo:
        raise InvalidRequest("missing repo or tag query parameter")
    target = f"{repo}:{tag_}" if tag_ else repo
    parse_reference(target)
    await state.catalog.lookup(request.match_info["name"])
    try:
        await state.store.tag(request.match_info["name"], target)
    finally:
        state.catalog.invalidate()
    return web.json_response(
        {
            "message": f"Model tagged successfully with {target!r}".replace("'", '"'),
            "target": target,
        },
        status=201,
    )


async def load_model(request: web.Request) -> web.Response:
    """Start the model's runner now (``?mode=completion|embedding|reranking``)."""
    state = request.app[STATE]
    mode = request.query.get("mode", "completion")
    if mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}")
    model = await state.catalog.lookup(request.match_info["name"])
    mode_t: Mode = mode
    await state.supervisor.load(model.id, mode_t)
    return web.json_response({"model": display_name(model), "id": model.id, "mode": mode})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/models", list_models)
    r.add_post("/models/create", create)
    r.add_post("/models/load", load_archive)
    r.add_delete("/models/purge", purge)
    # Suffix routes before the bare {name:.+} ones: names contain slashes.
    r.add_post("/models/{name:.+}/tag", tag)
    r.add_post("/models/{name:.+}/push", push)
    r.add_post("/models/{name:.+}/load", load_model)
    r.add_get("/models/{name:.+}", get_model)
    r.add_delete("/models/{name:.+}", delete)


__all__ = ["ModelRunnerError", "add_routes"]
