"""The dashboard's pure decisions: which requests are a browser's, which paths are its public
files, and which Origin is the daemon's own (the DNS-rebinding case stays refused)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from modelrunner.server.api.ui import STATIC_DIR, is_ui_asset, wants_html
from modelrunner.server.middleware import is_same_origin


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("text/html", True),
        ("*/*", False),  # curl
        ("application/json", False),
        ("", False),
        ("text/htmlx", False),
    ],
)
def test_wants_html(accept: str, html: bool) -> None:
    request = make_mocked_request("GET", "/", headers={"Accept": accept} if accept else {})
    assert wants_html(request) is html


@pytest.mark.parametrize(
    ("path", "public"),
    [
        ("/ui", True),
        ("/ui/", True),
        ("/ui/app.js", True),
        ("/ui/style.css", True),
        ("/ui/../config.yaml", False),
        ("/ui/.hidden.js", False),
        ("/ui/sub/app.js", False),
        ("/ui/App.js", False),
        ("/uix/app.js", False),
        ("/models", False),
    ],
)
def test_is_ui_asset(path: str, public: bool) -> None:
    assert is_ui_asset(path) is public


def test_every_shipped_file_is_servable() -> None:
    names = [p.name for p in STATIC_DIR.iterdir()]
    assert "index.html" in names
    assert all(is_ui_asset(f"/ui/{n}") for n in names), names


@pytest.mark.parametrize(
    ("host", "origin", "same"),
    [
        ("127.0.0.1:12434", "http://127.0.0.1:12434", True),
        ("localhost:12434", "http://localhost:12434", True),
        ("[::1]:12434", "http://[::1]:12434", True),
        ("192.168.1.5:12434", "http://192.168.1.5:12434", True),
        ("127.0.0.1:12434", "http://127.0.0.1:3000", False),  # another local app
        ("127.0.0.1:12434", "http://evil.example", False),
        ("evil.example:12434", "http://evil.example:12434", False),  # DNS rebinding
        ("localhost", "http://localhost:3000", False),
    ],
)
def test_is_same_origin(host: str, origin: str, same: bool) -> None:
    request = make_mocked_request("POST", "/engines/unload", headers={"Host": host})
    assert is_same_origin(request, origin) is same
