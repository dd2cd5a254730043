"""Registry authentication: challenges, Docker credentials, bearer tokens per scope.

``Authenticator`` answers a registry's ``WWW-Authenticate`` challenge: Basic with the
credentials from ``~/.docker/config.json``, or Bearer with a token fetched from the realm
(with those credentials, or anonymously) and cached per scope until shortly before it expires.
The rest is pure: challenge parsing, the credential lookup (a blocking file read, run in a
thread), and the token cache.

Why our own: oras-py keeps a single token per client, so a pull token is re-sent for a push
and for a second repository (401), and an expired token is re-sent forever (distribution.md
2.6 #5-6).  Here a token belongs to one ``(registry, repository, actions)`` scope and carries
its expiry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
from yarl import URL

from ..errors import ConfigError, RegistryAuthError, RegistryError
from .wire import describe, json_field, plain_http_allowed, read_body, registry_errors

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


class Authenticator:
    """Answers registry challenges for one client; shared by its concurrent operations."""

    def __init__(
        self,
        docker_config: Path,
        http: Callable[[], aiohttp.ClientSession],
        insecure: frozenset[str] = frozenset(),
    ) -> None:
        self.docker_config = docker_config
        self.tokens = TokenCache()
        self.token_requests = 0  # for tests and metrics
        self._http = http
        self._insecure = insecure
        self._challenges: dict[str, Challenge] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def login_hint(self, registry: str) -> str:
        return (
            f"to log in, put credentials for {registry} in {self.docker_config} "
            f"(`docker login {registry}` writes them)"
        )

    async def header(self, registry: str, repository: str, push: bool) -> str | None:
        """The Authorization header for a request, once the registry has challenged us."""
        challenge = self._challenges.get(registry)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = await self.credentials(registry)
            return creds.basic_header() if creds else None
        scope = scope_for(repository, push)
        token = self.tokens.get(registry, scope)
        if token is None:
            token = await self._fetch_token(registry, challenge, scope)
        return f"Bearer {token}"

    async def on_challenge(
        self, registry: str, repository: str, push: bool, challenge: Challenge, sent: str | None
    ) -> bool:
        """Learn from a 401; True when one retry with (new) credentials makes sense."""
        self._challenges[registry] = challenge
        if challenge.scheme == "basic":
            # Sent Basic and refused: the password is wrong; retrying would not help.
            if sent is not None and sent.startswith("Basic "):
                return False
            return await self.credentials(registry) is not None
        # A token refused (expired early, revoked, too narrow): fetch a fresh one once.
        self.tokens.drop(registry, scope_for(repository, push))
        return True

    async def credentials(self, registry: str) -> Credentials | None:
        # Read each time: `docker login` while the daemon runs takes effect at once.
        return await asyncio.to_thread(load_credentials, self.docker_config, registry)

    async def _fetch_token(self, registry: str, challenge: Challenge, scope: str) -> str:
        async with self._locks.setdefault((registry, scope), asyncio.Lock()):
            cached = self.tokens.get(registry, scope)
            if cached is not None:  # a concurrent request fetched it meanwhile
                return cached
            creds = await self.credentials(registry)
            realm = URL(challenge.realm)
            if (
                creds is not None
                and realm.scheme != "https"
                and not plain_http_allowed(realm.raw_authority, self._insecure)
            ):
                raise RegistryAuthError(
                    f"registry {registry} wants credentials sent over plain HTTP to "
                    f"{challenge.realm}; refusing (list it in store.insecure_registries to allow)"
                )
            params = {"scope": scope}
            if challenge.service:
                params["service"] = challenge.service
            headers = {"Authorization": creds.basic_header()} if creds else {}
            self.token_requests += 1
            try:
                async with self._http().get(realm.update_query(params), headers=headers) as resp:
                    body = await read_body(resp, registry, 1 << 20)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as e:
                raise RegistryError(
                    f"cannot reach the token service {challenge.realm} of registry {registry}: "
                    f"{describe(e)}"
                ) from e
            if status in (401, 403):
                who = f"user {creds.username!r}" if creds else "anonymous access"
                raise RegistryAuthError(
                    f"the token service of registry {registry} refused {who}; "
                    f"{self.login_hint(registry)}"
                )
            if status != 200:
                raise RegistryError(
                    f"the token service of registry {registry} answered {status}: "
                    f"{registry_errors(body)[1]}"
                )
            token = json_field(body, "token") or json_field(body, "access_token")
            if not isinstance(token, str) or not token:
                raise RegistryError(f"the token service of registry {registry} sent no token")
            expires = json_field(body, "expires_in")
            ttl = float(expires) if isinstance(expires, int | float) else None
            self.tokens.put(registry, scope, token, ttl)
            return token
