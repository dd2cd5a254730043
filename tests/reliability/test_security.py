"""Security: socket mode, loopback-only TCP, CORS, and no file access outside the store."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psutil
import pytest

from tests.reliability.conftest import Target, pid_of


def test_unix_socket_is_0600(target: Target) -> None:
    """Only the owner may talk to the daemon through its socket."""
    st = os.stat(target.handle.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_tcp_listens_on_loopback_only(target: Target) -> None:
    """Without the explicit remote flag every TCP listener is on a loopback address."""
    conns = psutil.Process(pid_of(target.handle)).net_connections(kind="inet")
    listening = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    assert listening
    for addr in listening:
        assert ipaddress.ip_address(addr.ip).is_loopback, addr


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost.evil.example"])
async def test_cors_denies_unconfigured_origins(target: Target, origin: str) -> None:
    """No Access-Control-Allow-Origin for an origin that is not configured."""
    async with aiohttp.ClientSession(base_url=target.base_url) as http:
        preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        async with http.options("/engines/v1/chat/completions", headers=preflight) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert resp.status < 500
        async with http.get("/models", headers={"Origin": origin}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers


TRAVERSALS = [
    "../../../../../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "/etc/passwd",
    "file:///etc/passwd",
    "sha256:../../../../etc/passwd",
    "ai/x@sha256:../../../../etc/passwd",
]


@pytest.mark.parametrize("ref", TRAVERSALS)
async def test_no_file_access_outside_the_store(target: Target, ref: str, tmp_path: Path) -> None:
    """Traversal in any name-taking route never reads /etc/passwd nor writes outside the store."""
    q = quote(ref, safe="")
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/models/{q}", None),
        ("GET", f"/models/{ref}", None),
        ("DELETE", f"/models/{q}?force=true", None),
        ("POST", f"/models/{q}/tag?repo={q}&tag=x", None),
        ("POST", f"/models/ai/x/tag?repo={q}&tag=latest", None),
        ("POST", f"/models/{q}/push", None),
        ("GET", f"/engines/v1/models/{q}", None),
        ("GET", f"/logs?model={q}", None),
        ("POST", "/models/create", {"from": ref}),
        ("POST", "/engines/_configure", {"model": ref, "context-size": 512}),
        ("POST", "/engines/v1/chat/completions", {"model": ref, "messages": []}),
    ]
    async with aiohttp.ClientSession(base_url=target.base_url) as http:
        for method, path, body in requests:
            async with http.request(method, path, json=body) as resp:
                text = await resp.text(errors="replace")
                assert "root:x:0:0" not in text, (method, path)
                assert resp.status < 500, (method, path, resp.status, text[:300])
    assert Path("/etc/passwd").stat().st_size > 0


def hostile_tar(name: str, payload: bytes, *, symlink_to: str | None = None) -> bytes:
    """A tar with one member named *name* (or a symlink to *symlink_to*)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        if symlink_to is not None:
            info.type, info.linkname = tarfile.SYMTYPE, symlink_to
            tar.addfile(info)
        else:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


async def test_model_archive_cannot_write_outside_the_store(target: Target) -> None:
    """`POST /models/load` tars whose members climb out (`..`, absolute, symlinks) are refused
    with a JSON 4xx, and nothing appears where they pointed."""
    victim = Path(tempfile.mkdtemp(prefix="mr-victim-", dir="/tmp"))
    try:
        payload = b"owned"
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        members = [
            hostile_tar(f"../../../../../..{victim}/a", payload),
            hostile_tar(f"{victim}/b", payload),
            hostile_tar(f"blobs/sha256/../../../../../../..{victim}/c", payload),
            hostile_tar(f"blobs/{digest.replace(':', '/')}", b"", symlink_to=f"{victim}/d"),
            hostile_tar("manifest.json", b"", symlink_to="/etc/passwd"),
        ]
        async with aiohttp.ClientSession(base_url=target.base_url) as http:
            for tar in members:
                async with http.post("/models/load", data=tar) as resp:
                    text = await resp.text()
                    assert 400 <= resp.status < 500, (resp.status, text[:300])
                    assert "error" in json.loads(text), text[:300]
                    assert "root:x:0:0" not in text
            async with http.get("/models") as resp:
                assert await resp.json() == []
        assert not list(victim.iterdir())
    finally:
        shutil.rmtree(victim, ignore_errors=True)
