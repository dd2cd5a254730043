"""
The dashboard: ``GET /ui/`` and its static files, shipped in the package (``ui_static/``).

Owns serving those files (fixed content types, a strict Content-Security-Policy so the page can
only talk to this daemon and load nothing from elsewhere) and the choice of ``GET /`` for a
browser.  It has no data of its own and no write route: the page calls the API's routes like
any client, with the same checks (API keys included), so nothing here knows models or runners.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web

from modelrunner.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parents[2] / "ui_static"
UI_PREFIX = "/ui/"

_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
# One flat directory of lower-case names: no dots beyond the suffix, so no "..", no hidden files.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.(html|css|js|svg)")

# Everything from this daemon only: no CDN, no inline script, no frames of the page elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate (ETag/Last-Modified) each time: an upgraded daemon serves its new page at once.
    "Cache-Control": "no-cache",
}


def wants_html(request: web.Request) -> bool:
    """A browser's navigation (``Accept: text/html…``); curl's ``*/*`` and API clients are not."""
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip() == "text/html" for part in accept.split(","))


def is_ui_asset(path: str) -> bool:
    """The page's own static files: public, data-free (every call they make is checked)."""
    return path in ("/ui", UI_PREFIX) or (
        path.startswith(UI_PREFIX) and _NAME.fullmatch(path[len(UI_PREFIX) :]) is not None
    )


def is_public(request: web.Request) -> bool:
    """What an API-key check lets through: GET/HEAD of the page's files, a browser's ``GET /``."""
    if request.method not in ("GET", "HEAD"):
        return False
    return is_ui_asset(request.path) or (request.path == "/" and wants_html(request))


async def _file(name: str) -> web.FileResponse:
    match = _NAME.fullmatch(name)
    path = STATIC_DIR / name
    # FileResponse's own 404 has an empty body: check first, for the API's JSON error.
    if match is None or not await asyncio.to_thread(path.is_file):
        raise NotFound(f"no dashboard file {name!r}")
    headers = dict(_HEADERS)
    headers["Content-Type"] = f"{_TYPES['.' + match.group(1)]}; charset=utf-8"
    return web.FileResponse(path, headers=headers)  # stats and reads in the executor


async def index(_: web.Request) -> web.FileResponse:
    return await _file("index.html")


async def static(request: web.Request) -> web.FileResponse:
    return await _file(request.match_info["file"])


async def to_index(_: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(UI_PREFIX)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/ui", to_index)
    r.add_get(UI_PREFIX, index)
    r.add_get(UI_PREFIX + "{file}", static)
