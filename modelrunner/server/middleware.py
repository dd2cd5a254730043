"""
Request middleware: one JSON error shape, body limits, the Host check, CORS, and one log line
per request.

Management routes answer ``{"error": "..."}``; OpenAI routes (``.../v1/...``, ``/rerank``,
``/score``) answer OpenAI's ``{"error": {"message", "type", "code"}}`` because the openai package
reads ``error.message``.  Both come from the same exception tree (``modelrunner.errors``) and from
aiohttp's own HTTP exceptions (404/405/413).  Knows nothing of models or runners.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from modelrunner.errors import InvalidRequest, ModelRunnerError, PayloadTooLarge
from modelrunner.logs import access_line
from modelrunner.server.hosts import HostPolicy, arrived_at_loopback, refusal_message

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Observer = Callable[[web.Request, int, float], None]

_OPENAI_SUFFIXES = ("/rerank", "/score")
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    504: "timeout",  # the openai package raises InternalServerError for any 5xx
}


def is_openai_path(path: str) -> bool:
    """OpenAI-shaped errors for ``.../v1/...`` and the rerank/score routes."""
    return "/v1/" in path or path.endswith("/v1") or path.rstrip("/").endswith(_OPENAI_SUFFIXES)


ErrorShape = Callable[[int, str, str], dict[str, Any]]


def _openai_shape(status: int, message: str, code: str) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": code}}


def is_ollama_path(path: str) -> bool:
    """Ollama's routes: ``/api/...``."""
    return path == "/api" or path.startswith("/api/")


def _ollama_shape(status: int, message: str, code: str) -> dict[str, Any]:
    del status, code  # Ollama's clients read only the message; the status says the rest
    return {"error": message}


def is_anthropic_path(path: str) -> bool:
    """Anthropic's Messages routes: ``.../v1/messages[/count_tokens]`` and ``/anthropic/...``."""
    return path.startswith("/anthropic/") or path.rstrip("/").endswith(
        ("/v1/messages", "/v1/messages/count_tokens")
    )


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_shape(status: int, message: str, code: str) -> dict[str, Any]:
    """Anthropic's error body; the anthropic package picks its exception by the status."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def is_responses_path(path: str) -> bool:
    """Docker's Responses aliases without ``/v1``: ``/responses...``, ``/engines/responses...``."""
    return path.startswith(("/responses", "/engines/responses")) and (
        path.split("/")[-1] == "responses" or "/responses/" in path
    )


# Each API family's error shape, by path; the first match wins, else management's
# ``{"error": message}``.  A family whose paths overlap another's (``/v1/...``) goes first.
ERROR_SHAPES: tuple[tuple[Callable[[str], bool], ErrorShape], ...] = (
    (is_anthropic_path, anthropic_shape),
    (is_openai_path, _openai_shape),
    (is_ollama_path, _ollama_shape),
    (is_responses_path, _openai_shape),
)


def error_body(path: str, status: int, message: str, code: str) -> dict[str, Any]:
    """The error payload for *path*'s family of routes."""
    for matches, shape in ERROR_SHAPES:
        if matches(path):
            return shape(status, message, code)
    return {"error": message}


def error_response(
    request: web.Request,
    status: int,
    message: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        error_body(request.path, status, message, code), status=status, headers=headers
    )


def _http_message(e: web.HTTPException) -> str:
    if e.status == 404:
        return f"no route for {e.status} {e.reason.lower()}: see docs/openapi.yaml"
    if e.status == 405:
        return "method not allowed"
    if e.status == 413:
        return "request body is too large"
    text = e.text or e.reason
    return text.removeprefix(f"{e.status}: ").strip() or e.reason


def _frames(e: BaseException) -> list[str]:
    """Where *e* came from (file:line in function), without reading source files."""
    return [
        f"{frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}"
        for frame, lineno in traceback.walk_tb(e.__traceback__)
    ]


def retry_headers(error: ModelRunnerError) -> dict[str, str] | None:
    """``Retry-After`` for an error that knows when (TooManyRequests, some Unavailable)."""
    retry_after = getattr(error, "retry_after_s", None)
    return None if retry_after is None else {"Retry-After": str(retry_after)}


def unhandled(method: str, path: str, error: Exception) -> str:
    """Log an unexpected error with where it came from; the message the client gets (a
    request id to find the log line by, never the error itself)."""
    request_id = uuid.uuid4().hex[:12]
    # Frames without source lines (not log.exception): no file reads on the loop.
    log.error(
        "http.unhandled",
        method=method,
        path=path,
        id=request_id,
        error=repr(error),
        frames=_frames(error),
    )
    return f"internal error (request id {request_id})"


def make_error_middleware(observe: Observer | None = None) -> Any:
    """Render every failure as JSON and log one ``http.request`` line per request."""

    @web.middleware
    async def errors_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except ModelRunnerError as e:
            status = e.status
            return error_response(request, e.status, e.message, e.code, retry_headers(e))
        except web.HTTPException as e:
            status = e.status
            if e.status < 400:
                raise
            if e.status == 413:
                return error_response(request, 413, _http_message(e), PayloadTooLarge.code)
            code = "not_found" if e.status == 404 else "http_error"
            headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
            return error_response(request, e.status, _http_message(e), code, headers)
        except (HttpProcessingError, RequestPayloadError) as e:
            # The body could not be read as framed or encoded (gzip that is not gzip): the
            # client's fault, and the connection's framing is no longer to be trusted.
            status = 400
            why = str(e).strip().rsplit("\n", 1)[-1].strip() or "bad request"
            response = error_response(
                request, status, f"the request body could not be read: {why}", "bad_body"
            )
            response.force_close()
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away (handler cancellation): nginx's code for it
            raise
        except (ConnectionResetError, TimeoutError) as e:
            # The client went away (or stalled) while we wrote: nothing left to answer.
            status = 499
            log.info("http.client_gone", path=request.path, error=repr(e))
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback out
            message = unhandled(request.method, request.path, e)
            return error_response(request, 500, message, "internal_error")
        finally:
            elapsed = time.perf_counter() - started
            if observe is not None:
                observe(request, status, elapsed)
            access_line(request.method, request.path, status, round(elapsed * 1000, 2))

    return errors_and_access_log


class RequestTimeout(ModelRunnerError):
    status = 408
    code = "request_timeout"


# server.body_timeout_s, set by make_app (a slowloris body must not hold a handler forever).
BODY_TIMEOUT_S = web.AppKey("body_timeout_s", float)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing (413) more than *limit* bytes without keeping them, and (408)
    one that has not all arrived within ``server.body_timeout_s`` (0 = no limit)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    timeout_s = request.app.get(BODY_TIMEOUT_S, 30.0)
    try:
        async with asyncio.timeout(timeout_s or None):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"request body not received within {timeout_s:g}s (server.body_timeout_s)"
        ) from None
    return b"".join(chunks)


def parse_json_object(body: bytes, *, empty_ok: bool = False) -> dict[str, Any]:
    """A JSON object or InvalidRequest (malformed, too deep, not an object, bad UTF-8)."""
    if not body.strip():
        if empty_ok:
            return {}
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = _strict_or_error(body)
    if not isinstance(value, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {type(value).__name__}")
    return value


def _strict_or_error(body: bytes) -> Any:
    """What json makes of a body orjson refused: json accepts a little more (NaN, integers
    over 64 bits, lone surrogates), and its messages are the ones clients have seen."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}") from None
    return value


def _origin_pattern(origin: str) -> re.Pattern[str]:
    """``http://localhost:*`` matches any port (Docker's entries are literal: a bug we fix)."""
    escaped = re.escape(origin.rstrip("/"))
    return re.compile("^" + escaped.replace(r":\*", r"(:[0-9]{1,5})?") + "$")


_NO_ALLOWED_HOSTS = HostPolicy(lambda: ())


def is_same_origin(request: web.Request, origin: str, hosts: HostPolicy | None = None) -> bool:
    """The daemon's own page (the dashboard's calls and preflights carry ``Origin``): not a
    cross-site call.

    Only for a ``Host`` that is one of the daemon's names (loopback, an IP literal, an allowed
    host): a DNS-rebinding page has its own domain name there, so it is still refused."""
    host = request.headers.get("Host")
    if host is None or not (hosts or _NO_ALLOWED_HOSTS).names_daemon(host):
        return False
    return origin.rstrip("/") == f"{request.scheme}://{host}"


def make_host_middleware(hosts: HostPolicy) -> Any:
    """403, in the route's error shape, for a ``Host`` the connection may not send
    (``server/hosts.py``: the DNS-rebinding guard)."""

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        host = request.headers.get("Host")
        if host is None or hosts.allows(host, loopback=arrived_at_loopback(sockname)):
            return await handler(request)
        return error_response(request, 403, refusal_message(host), "forbidden_host")

    return host_check


CORS_ORIGIN = web.RequestKey("cors_origin", str)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the allowed origin (never the runner's own header)."""
    origin = request.get(CORS_ORIGIN)
    response.headers.popall("Access-Control-Allow-Origin", None)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


def make_cors_middleware(
    origins: Iterable[str] | Callable[[], Iterable[str]], hosts: HostPolicy | None = None
) -> Any:
    """CORS for the daemon's own origin and the configured ones (``*`` = any); others get no
    CORS headers and a 403.

    *origins* may be a callable, read at each request (a config reload applies at once)."""
    read = origins if callable(origins) else (lambda: origins)
    compiled: dict[tuple[str, ...], tuple[bool, list[re.Pattern[str]]]] = {}

    def ok(origin: str) -> bool:
        allowed = tuple(o.strip() for o in read() if o.strip())
        rules = compiled.get(allowed)
        if rules is None:
            compiled.clear()
            rules = compiled[allowed] = (
                "*" in allowed,
                [_origin_pattern(o) for o in allowed if o != "*"],
            )
        allow_all, patterns = rules
        return allow_all or any(p.match(origin) for p in patterns)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if not (is_same_origin(request, origin, hosts) or ok(origin)):
            return error_response(request, 403, f"origin {origin!r} is not allowed", "forbidden")
        # Headers go on in on_response_prepare (add_cors_headers), so streamed answers get them too.
        request[CORS_ORIGIN] = origin
        if request.method == "OPTIONS":
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Credentials": "true",
                    "Access-Control-Allow-Methods": "GET, POST, DELETE",
                    # Docker answers "*", which browsers never take to cover Authorization
                    # (the openai package's API key): name what the preflight asks for.
                    "Access-Control-Allow-Headers": request.headers.get(
                        "Access-Control-Request-Headers", "*"
                    ),
                    "Vary": "Origin, Access-Control-Request-Headers",
                },
            )
        return await handler(request)

    return cors
