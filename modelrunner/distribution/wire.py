"""HTTP details shared by the registry client and its authenticator (aiohttp, client side only).

Bounded body reads, one wording for network failures, registry error bodies, and the rule for
when plain HTTP is allowed.
"""

from __future__ import annotations

import json

import aiohttp

from ..errors import RegistryError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def split_host(hostport: str) -> str:
    """``[::1]:5000`` -> ``::1``; ``127.0.0.1:5000`` -> ``127.0.0.1``; ``::1`` stays."""
    if hostport.startswith("["):
        return hostport[1:].partition("]")[0]
    return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport


def plain_http_allowed(hostport: str, insecure: frozenset[str]) -> bool:
    """Loopback, or listed (as ``host`` or ``host:port``) in ``store.insecure_registries``."""
    host = split_host(hostport).lower()
    return host in LOCAL_HOSTS or hostport.lower() in insecure or host in insecure


async def read_body(resp: aiohttp.ClientResponse, registry: str, limit: int) -> bytes:
    """The whole body, refused when larger than *limit* (a registry is not trusted with RAM)."""
    try:
        body = await resp.content.read(limit + 1)
        while len(body) <= limit and not resp.content.at_eof():
            more = await resp.content.read(limit + 1 - len(body))
            if not more:
                break
            body += more
    except (aiohttp.ClientError, TimeoutError) as e:
        raise RegistryError(f"registry {registry}: reading the answer failed: {describe(e)}") from e
    if len(body) > limit:
        raise RegistryError(f"registry {registry} sent an answer larger than {limit} bytes")
    return body


def registry_errors(body: bytes) -> tuple[str, str]:
    """``{"errors":[{"code","message"}]}`` -> (code, message); best effort."""
    try:
        first = (json.loads(body).get("errors") or [])[0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, AttributeError, IndexError, TypeError):
        return "", body[:200].decode(errors="replace").strip()


def json_field(body: bytes, key: str) -> object:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def describe(e: BaseException) -> str:
    """A network failure in a few words: "connection refused", "timed out", …"""
    if isinstance(e, aiohttp.ClientConnectorError):
        return (e.os_error.strerror or str(e.os_error)).lower()
    if isinstance(e, TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__
