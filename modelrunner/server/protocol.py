"""
Errors that aiohttp's HTTP parser answers itself, in our JSON shape.

A request aiohttp cannot parse (a header over 8190 bytes, thousands of headers, NUL in a header)
never reaches the app's middleware: the protocol answers it with a plain-text 400 and closes the
connection.  Clients of this daemon parse ``{"error": "…"}``, so the runner here builds the same
server with a request handler whose ``handle_error`` renders JSON.  Knows nothing of routes.
"""

from __future__ import annotations

import json
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from modelrunner.server.auth import parser_error_summary

log = structlog.get_logger(__name__)


class JSONErrorRequestHandler(RequestHandler):
    """aiohttp's protocol, with its own error answers as ``{"error": message}``."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            # The parser's message quotes the offending header line, which may carry an API key:
            # neither the log nor the answer gets more than its first words.
            message = parser_error_summary(message or exc.message)
            log.info("http.unparseable_request", status=status, error=message)
            exc = None
        # The parent logs, refuses once bytes were sent, and says what went wrong.
        super().handle_error(request, status, exc, message)
        if status >= 500:
            text = "internal error while reading the request"
        else:
            text = message or HTTPStatus(status).phrase
        response = web.Response(
            status=status, text=json.dumps({"error": text}), content_type="application/json"
        )
        response.force_close()
        return response


class JSONErrorServer(Server):
    """Builds `JSONErrorRequestHandler` protocols; everything else is aiohttp's Server."""

    def __call__(self) -> RequestHandler:
        return JSONErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer parser errors in JSON."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # Same object and state; only the protocol factory differs (no new attributes).
        server.__class__ = JSONErrorServer
        return server
