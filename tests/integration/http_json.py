"""One JSON request to a test daemon over TCP with the standard library: (status, body), for the
error cases the client packages turn into exceptions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.fixtures.daemon import DaemonHandle


def call(
    d: DaemonHandle, method: str, path: str, body: bytes | dict[str, Any] | None = None
) -> tuple[int, Any]:
    """*body* as JSON (bytes as they are); the answer parsed, None when empty."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    req = urllib.request.Request(
        d.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    return status, json.loads(text) if text else None
