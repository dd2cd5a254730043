"""
Operator routes that watch the daemon work: ``GET /engines/requests`` (Docker's request log)
and ``GET /engines/events`` (live events).

Both answer JSON by default and server-sent events with ``Accept: text/event-stream``.  The
request log is Docker's: a list of ``{model, count, config, records}``; its stream sends
``connected``, then ``existing_request`` (with ``?include_existing=true``) and ``new_request``
events, each a one-record list of that shape.  The events stream sends each event as
``id: <seq>`` / ``event: <type>`` / ``data: <json>``, after a first ``connected`` frame (sent
once subscribed: what follows is complete); ``Last-Event-ID`` or ``?since=`` replays the kept
ones after that number first.  Streams end when the daemon shuts down; a client that
falls behind its queue is dropped (``sse_hub.Hub``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from modelrunner.config import ServerConfig
from modelrunner.errors import InvalidRequest, ModelNotFound, NotFound
from modelrunner.server.observe.events import EventBus
from modelrunner.server.observe.request_log import RequestLog
from modelrunner.server.observe.sse_hub import closer, frame, stream, wants_sse
from modelrunner.server.state import STATE

if TYPE_CHECKING:
    from modelrunner.server.state import ServerState


def setup(state: ServerState, server: ServerConfig) -> None:
    """Size the bus and the log from the config (they are not resized on reload)."""
    state.events = EventBus(queue_size=server.events_queue)
    state.requests = RequestLog(
        per_model=server.request_log_records, body_bytes=server.request_log_body_bytes
    )


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise InvalidRequest(f"'{name}' must be true or false")
    return value in ("true", "1")


async def _model_filter(state: ServerState, request: web.Request) -> str | None:
    """The model id ``?model=`` names: a stored model, or one with records since deleted."""
    ref = request.query.get("model")
    if ref is None or ref == "":
        return None
    try:
        return (await state.catalog.lookup(ref)).id
    except ModelNotFound:
        found = state.requests.find(ref)
        if found is None:
            raise
        return found


async def requests(request: web.Request) -> web.StreamResponse:
    """The last requests per model (``?model=``), or follow new ones as SSE."""
    state = request.app[STATE]
    if not state.config.server.request_log:
        raise NotFound("the request log is off (server.request_log: false)")
    model_id = await _model_filter(state, request)
    include = _flag(request, "include_existing")
    log = state.requests
    if not wants_sse(request):
        return web.json_response(log.groups(model_id))
    first = [frame("connected", {"status": "connected"})]
    if include:
        for group in log.groups(model_id):
            for record in group["records"]:
                first.append(
                    frame("existing_request", [{**group, "count": 1, "records": [record]}])
                )
    sub = log.hub.subscribe(
        closer(request), None if model_id is None else (lambda topic: topic == model_id)
    )
    return await stream(request, log.hub, sub, first)


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since") or request.headers.get("Last-Event-ID")
    if raw is None:
        return None
    try:
        since = int(raw)
    except ValueError:
        raise InvalidRequest("'since' (or Last-Event-ID) must be an event number") from None
    if since < 0:
        raise InvalidRequest("'since' (or Last-Event-ID) must be an event number >= 0")
    return since


async def events(request: web.Request) -> web.StreamResponse:
    """Live events as SSE; without ``Accept: text/event-stream``, the kept ones as JSON."""
    bus = request.app[STATE].events
    since = _since(request)
    if not wants_sse(request):
        return web.json_response(bus.since(since or 0))
    # Subscribed in the same step as the replay is built: nothing falls in between.
    sub = bus.hub.subscribe(closer(request))
    hello = frame("connected", {"type": "connected", "last_seq": bus.last_seq})
    kept = bus.since(since) if since is not None else []
    replay = [frame(e["type"], e, event_id=e["seq"]) for e in kept]
    return await stream(request, bus.hub, sub, [hello, *replay])


def metrics_text(state: ServerState) -> str:
    """Prometheus lines for the streams: followers now, and those dropped for not reading."""
    hubs = (state.events.hub, state.requests.hub)
    lines = [
        "# HELP modelrunner_stream_clients Clients following an SSE stream now.",
        "# TYPE modelrunner_stream_clients gauge",
        *(f'modelrunner_stream_clients{{stream="{h.name}"}} {h.subscribers}' for h in hubs),
        "# HELP modelrunner_stream_clients_dropped_total Clients dropped for not keeping up.",
        "# TYPE modelrunner_stream_clients_dropped_total counter",
        *(
            f'modelrunner_stream_clients_dropped_total{{stream="{h.name}"}} {h.dropped}'
            for h in hubs
        ),
    ]
    return "\n".join(lines) + "\n"


def close_streams(state: ServerState) -> None:
    """End every follower's stream: they never finish by themselves, so the SIGTERM drain
    (which waits for handlers in flight) must end them first, or it would wait out its bound
    and then cut them."""
    state.events.hub.close()
    state.requests.hub.close()


async def _close_streams(app: web.Application) -> None:
    close_streams(app[STATE])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/engines/requests", requests)
    app.router.add_get("/engines/events", events)
    app.on_shutdown.append(_close_streams)
