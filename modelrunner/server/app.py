"""
The aiohttp application: the composition root of the daemon's HTTP side.

``make_app(config, store, supervisor)`` wires routes, middleware and the shared state; it does
not touch the store or the supervisor (their lifecycles belong to ``daemon.py``), so the router
can be built and inspected with stand-ins.  The upstream connection pool and the on-disk
``_configure`` settings live and die with the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from modelrunner.config import Config
from modelrunner.runners.supervisor import Supervisor
from modelrunner.server import auth, drain
from modelrunner.server.api import (
    activity_api,
    anthropic_api,
    engines_api,
    models_api,
    openai_api,
    ui,
)
from modelrunner.server.api.ollama import routes as ollama_api
from modelrunner.server.api.responses import routes as responses_api
from modelrunner.server.catalog import Catalog
from modelrunner.server.middleware import (
    BODY_TIMEOUT_S,
    add_cors_headers,
    make_cors_middleware,
    make_error_middleware,
    make_host_middleware,
)
from modelrunner.server.relay.proxy import UpstreamPool
from modelrunner.server.settings import SettingsFile
from modelrunner.server.state import STATE, ServerState

if TYPE_CHECKING:
    from modelrunner.distribution.store import Store

__all__ = ["STATE", "ServerState", "make_app", "settings_path"]


def settings_path(config: Config) -> SettingsFile:
    return SettingsFile(config.home / "settings.json")


def make_app(
    config: Config,
    store: Store,
    supervisor: Supervisor,
    *,
    catalog: Catalog | None = None,
) -> web.Application:
    """The daemon's app; pass the *catalog* the supervisor's ``resolve`` came from, if any."""
    if catalog is None:
        catalog = Catalog(config, store, settings_path(config))
    server = config.server
    upstream = UpstreamPool(
        connect_timeout_s=server.upstream_connect_timeout_s,
        read_timeout_s=server.upstream_read_timeout_s,
        pump_threads=server.stream_threads,
    )
    state = ServerState(catalog=catalog, supervisor=supervisor, upstream=upstream)
    keys = state.api_keys  # filled by key_ring_loader before the first request
    activity_api.setup(state, server)

    def observe(request: web.Request, status: int, seconds: float) -> None:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        state.metrics.observe_request(request.method, route, status, seconds)

    app = web.Application(
        middlewares=[
            make_error_middleware(observe),
            make_host_middleware(state.hosts),  # before CORS: a rebound name is refused first
            make_cors_middleware(lambda: state.config.server.origins, state.hosts),
            # After CORS: preflights never need a key.
            auth.make_auth_middleware(keys, ui.is_public),
            state.drain.middleware,
        ],
        # Bodies are read by read_body() against server.max_body_bytes; the tar upload streams.
        client_max_size=server.max_body_bytes,
    )
    app[STATE] = state
    app[BODY_TIMEOUT_S] = server.body_timeout_s
    app.on_response_prepare.append(add_cors_headers)
    app.on_response_prepare.append(drain.mark_started)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await state.settings.load()
        yield
        await upstream.close()

    app.cleanup_ctx.append(auth.key_ring_loader(keys, server))
    app.cleanup_ctx.append(lifecycle)
    engines_api.add_routes(app)
    models_api.add_routes(app)
    openai_api.add_routes(app)
    ollama_api.add_routes(app)
    ui.add_routes(app)
    anthropic_api.add_routes(app)
    responses_api.add_routes(app)
    activity_api.add_routes(app)
    return app
