"""
API keys on the TCP listener: who may talk to the daemon over the network.

Owns the key ring (``server.api_keys``, ``server.api_keys_file``, ``MODEL_RUNNER_API_KEYS``), the
middleware that asks every TCP request for ``Authorization: Bearer KEY`` or ``x-api-key: KEY``
(what the openai, anthropic and ollama packages send), and the start-up rule that a non-loopback
``server.host`` needs keys or an explicit ``server.allow_unauthenticated``.  The Unix socket never
asks: its 0600 mode is its access control.

Keys are held only as SHA-256 digests and compared with ``hmac.compare_digest`` against every
key (no early exit), so neither the comparison's time nor a dump of the app reveals one.  No
message, log line or metric label here ever carries a key or what the client sent.
Knows nothing of routes or models; the error's shape comes from ``middleware.error_response``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from modelrunner.config import ServerConfig
from modelrunner.errors import ConfigError
from modelrunner.server.middleware import error_response

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHALLENGE = 'Bearer realm="modelrunner"'
HOW = (
    "send `Authorization: Bearer <key>` or `x-api-key: <key>` "
    "(the CLI sends MODEL_RUNNER_API_KEY; the Unix socket needs no key)"
)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """The accepted keys, as digests; empty means the daemon asks for none."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests: tuple[bytes, ...] = ()
        self.replace(keys)

    def replace(self, keys: Iterable[str]) -> None:
        """Accept exactly *keys* from now on (at start-up, once the keys file is read)."""
        self._digests = tuple(_digest(k) for k in dict.fromkeys(keys) if k)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"<KeyRing {len(self._digests)} keys>"

    def accepts(self, presented: str) -> bool:
        """True if *presented* is one of the keys; the time taken does not depend on which."""
        candidate = _digest(presented)
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(candidate, digest)
        return found


def read_keys_file(path: Path) -> list[str]:
    """The keys in *path*, one a line (blank lines and ``#`` comments skipped); blocking."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(f"server.api_keys_file: cannot read {path}: {why}") from None
    keys = [line.strip() for line in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        # An empty file must not quietly turn authentication off.
        raise ConfigError(f"server.api_keys_file: {path} holds no keys (one key a line)")
    return keys


def key_ring_loader(
    ring: KeyRing, server: ServerConfig
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` that fills *ring* before the first request (the file read off-loop)."""

    async def load(app: web.Application) -> AsyncIterator[None]:
        keys = list(server.api_keys)
        if server.api_keys_file is not None:
            keys += await asyncio.to_thread(read_keys_file, server.api_keys_file)
        ring.replace(keys)
        if ring:
            log.info("daemon.api_keys", keys=len(ring), applies_to="tcp")
        yield

    return load


def keys_configured(server: ServerConfig) -> bool:
    """Whether the daemon will ask for keys (an empty keys file fails the start instead)."""
    return bool(server.api_keys) or server.api_keys_file is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(server: ServerConfig) -> None:
    """Refuse a non-loopback TCP listener that would trust whoever connects."""
    ports = [p for p in (server.port, server.ollama_port) if p]
    if not ports or is_loopback(server.host):
        return
    where = ", ".join(f"{server.host}:{p}" for p in dict.fromkeys(ports))
    if keys_configured(server):
        log.info("daemon.remote_access", host=server.host, ports=ports, auth="api_keys")
        return
    if not (server.allow_unauthenticated or server.allow_remote):
        raise ConfigError(
            f"refusing to listen on {where} without API keys: not a loopback "
            "address; set server.api_keys (or MODEL_RUNNER_API_KEYS, or server.api_keys_file: "
            "MODEL_RUNNER_API_KEYS_FILE), "
            "or pass --allow-unauthenticated (server.allow_unauthenticated: true) to let anyone "
            "who reaches it use and manage your models"
        )
    log.warning(
        "daemon.remote_access",
        host=server.host,
        ports=ports,
        auth="none",
        note="anyone who can reach this address can use and manage your models",
    )


def over_unix_socket(request: web.BaseRequest) -> bool:
    """Whether *request* came in on the Unix socket, from the accepted socket's own family.

    Unknown (the transport is already gone) counts as TCP: when in doubt, ask for the key."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def presented_key(request: web.BaseRequest) -> str | None:
    """The key the client sent: ``Authorization: Bearer KEY`` first, else ``x-api-key``."""
    return key_in(request.headers)


def key_in(headers: Mapping[str, str]) -> str | None:
    """``presented_key`` from the headers alone (the fast lane has no aiohttp request)."""
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def parser_error_summary(message: str | None) -> str | None:
    """aiohttp's parser error without the excerpt it quotes, which may be an API key's header.

    ``Invalid header value char:\n\n  b'Authorization: Bearer sk-…'`` becomes ``Invalid header
    value char``; ``Got more than 8190 bytes when reading: b'Bearer sk-…'`` loses its bytes."""
    if not message:
        return message
    first = message.strip().split("\n", 1)[0]
    first = re.split(r":\s*b['\"]", first, maxsplit=1)[0].rstrip(" :.")
    too_long = re.fullmatch(r"Got more than (\d+) bytes when reading", first)
    if too_long:
        return f"a request line or header is longer than {too_long[1]} bytes"
    return first or "bad request"


def make_auth_middleware(
    ring: KeyRing, public: Callable[[web.Request], bool] = lambda _: False
) -> Any:
    """401 in the route's error shape for a TCP request without a valid key; preflights pass,
    and so do the *public* requests (the dashboard's data-free files: a browser's navigation
    cannot send a key, and every call the page then makes is checked)."""

    @web.middleware
    async def api_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not ring or over_unix_socket(request) or public(request):
            return await handler(request)
        key = presented_key(request)
        if key is None:
            message = f"this daemon requires an API key on TCP: {HOW}"
        elif not ring.accepts(key):
            message = f"the API key is not valid: {HOW}"
        else:
            return await handler(request)
        headers = {"WWW-Authenticate": CHALLENGE}
        return error_response(request, 401, message, "invalid_api_key", headers)

    return api_keys
