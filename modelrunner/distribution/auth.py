"""Registry authentication state: challenges, Docker credentials, and the bearer-token cache.

Pure bookkeeping plus one blocking file read (``load_credentials``, run it in a thread); the
HTTP calls that fetch tokens live in ``registry.py``.  Nothing here knows aiohttp.

Why our own: oras-py keeps a single token per client, so a pull token is re-sent for a push
and for a second repository (401), and an expired token is re-sent forever (distribution.md
2.6 #5-6).  Here a token belongs to one ``(registry, repository, actions)`` scope and carries
its expiry.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ConfigError

# Docker Hub's names for itself, in ~/.docker/config.json keys and in references.
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
DOCKER_HUB_API_HOST = "registry-1.docker.io"

# Docker's distribution spec: a token without expires_in lasts 60 s.
DEFAULT_TOKEN_TTL_S = 60.0

_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def api_host(registry: str) -> str:
    """The host the registry API lives on (Docker Hub's is not ``docker.io``)."""
    return DOCKER_HUB_API_HOST if registry in DOCKER_HUB_ALIASES else registry


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: the scheme and its parameters."""

    scheme: Literal["basic", "bearer"]
    realm: str = ""
    service: str | None = None
    scope: str | None = None


def parse_challenge(header: str) -> Challenge | None:
    """``Bearer realm="…",service="…",scope="…"`` or ``Basic realm="…"``; None if neither."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _PARAM.finditer(rest)}
    match scheme.lower():
        case "bearer":
            realm = params.get("realm", "")
            if not realm:
                return None
            return Challenge("bearer", realm, params.get("service"), params.get("scope"))
        case "basic":
            return Challenge("basic", params.get("realm", ""))
        case _:
            return None


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def _key_host(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``index.docker.io``; ``host:5000`` stays."""
    host = key.split("://", 1)[-1]
    return host.split("/", 1)[0].lower()


def load_credentials(path: Path, registry: str) -> Credentials | None:
    """Credentials for *registry* from a Docker ``config.json`` (``auths``); blocking.

    Accepts ``auth`` (base64 ``user:password``) or ``username``/``password`` entries, keyed by
    host, ``https://host`` or ``https://host/v1/``; Docker Hub under any of its aliases.
    """
    try:
        data = json.loads(path.expanduser().read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read Docker credentials from {path}: {e}") from e
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = {registry.lower()}
    if registry in DOCKER_HUB_ALIASES:
        wanted = set(DOCKER_HUB_ALIASES)
    for key, entry in auths.items():
        if _key_host(key) not in wanted or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, TypeError) as e:
                raise ConfigError(f"{path}: auths[{key!r}].auth is not base64 user:password") from e
            if not sep:
                raise ConfigError(f"{path}: auths[{key!r}].auth is not base64 user:password")
            return Credentials(user, password)
        if entry.get("username") and entry.get("password"):
            return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def scope_for(repository: str, push: bool) -> str:
    """The token scope an operation on *repository* needs (push needs pull too)."""
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


@dataclass(slots=True)
class TokenCache:
    """Bearer tokens per ``(registry, scope)``, dropped a margin before they expire.

    A ``pull,push`` token also serves ``pull`` requests on the same repository.
    """

    clock: Callable[[], float] = time.monotonic
    _tokens: dict[tuple[str, str], _Token] = field(default_factory=dict)

    def get(self, registry: str, scope: str) -> str | None:
        candidates = [scope]
        if scope.endswith(":pull"):
            candidates.append(scope + ",push")
        now = self.clock()
        for s in candidates:
            tok = self._tokens.get((registry, s))
            if tok is not None and tok.expires_at > now:
                return tok.value
        return None

    def put(self, registry: str, scope: str, token: str, expires_in: float | None) -> None:
        ttl = DEFAULT_TOKEN_TTL_S if not expires_in or expires_in <= 0 else expires_in
        # Renew early: a token must not expire between our check and the registry's.
        margin = min(30.0, ttl / 4)
        self._tokens[(registry, scope)] = _Token(token, self.clock() + ttl - margin)

    def drop(self, registry: str, scope: str) -> None:
        self._tokens.pop((registry, scope), None)
        if scope.endswith(":pull"):
            self._tokens.pop((registry, scope + ",push"), None)
