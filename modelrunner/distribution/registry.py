"""Our small async OCI distribution client (aiohttp): manifests, blobs, auth, retries.

It owns the wire: URLs, Accept headers, Range, upload sessions, challenges and tokens, and the
translation of every foreign error (aiohttp, HTTP status, registry error bodies) into
``RegistryError`` / ``RegistryAuthError`` / ``ModelNotFound`` / ``DigestMismatch`` where it
enters.  It knows nothing of the on-disk store: blob bytes are handed to the caller as a
stream, and verifying them while writing is the store's job (manifests, small and needed whole,
are verified here).

Why not oras-py: no digest checks, no resume, whole-file reads on push, 131 s retry storms on a
refused connection, tokens never renewed (distribution.md 2.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from ..config import StoreConfig
from ..errors import DigestMismatch, ModelNotFound, RegistryAuthError, RegistryError
from .auth import (
    Challenge,
    Credentials,
    TokenCache,
    api_host,
    load_credentials,
    parse_challenge,
    scope_for,
)

log = structlog.get_logger(__name__)

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# distribution answers 404 MANIFEST_UNKNOWN to a GET of an OCI manifest without this.
MANIFEST_ACCEPT = ", ".join(
    (MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST)
)
MAX_MANIFEST_BYTES = 4 << 20
# 1 MiB reads: per-chunk costs (await, hash update, write call) vanish against the copy.
CHUNK_SIZE = 1 << 20
RETRIES = 3  # after the first try: 0.25 + 0.5 + 1 s of backoff, then fail
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest exactly as the registry sent it; ``digest`` is sha256 of ``raw``."""

    raw: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        data = json.loads(self.raw)
        if not isinstance(data, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return data


@dataclass(frozen=True, slots=True)
class BlobStream:
    """A blob download: bytes from ``offset`` on (0 when the registry ignored the Range).

    ``total`` is the whole blob's size when the registry said it.
    """

    offset: int
    total: int | None
    chunks: AsyncIterator[bytes]


def _split_host(registry: str) -> str:
    """``[::1]:5000`` -> ``::1``; ``127.0.0.1:5000`` -> ``127.0.0.1``."""
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    return registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry


def _display(registry: str, repository: str, reference: str) -> str:
    sep = "@" if reference.startswith("sha256:") else ":"
    return f"{registry}/{repository}{sep}{reference}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _registry_errors(body: bytes) -> tuple[str, str]:
    """``{"errors":[{"code","message"}]}`` -> (code, message); best effort."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, AttributeError, IndexError, TypeError):
        return "", body[:200].decode(errors="replace").strip()


class RegistryClient:
    """Talks to OCI registries for the store; one per store, shared by concurrent operations."""

    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._docker_config = Path(config.docker_config).expanduser()
        self._insecure = {r.lower() for r in config.insecure_registries}
        self._timeout = aiohttp.ClientTimeout(
            total=None,  # a 4 GB blob may take long; a stalled socket is the error
            sock_connect=config.registry_timeout_s,
            sock_read=config.registry_timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self._challenges: dict[str, Challenge] = {}
        self._tokens = TokenCache()
        self._token_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.token_requests = 0  # for tests and metrics

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    # -- URLs ------------------------------------------------------------------------------

    def scheme(self, registry: str) -> str:
        """Plain HTTP only for loopback and the configured insecure registries."""
        host = _split_host(registry).lower()
        plain = host in LOCAL_HOSTS or registry.lower() in self._insecure or host in self._insecure
        return "http" if plain else "https"

    def _base(self, registry: str) -> str:
        return f"{self.scheme(registry)}://{api_host(registry)}"

    def _url(self, registry: str, repository: str, kind: str, ref: str) -> URL:
        return URL(f"{self._base(registry)}/v2/{repository}/{kind}/{ref}", encoded=True)

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, registry: str, repository: str, reference: str) -> Manifest:
        """Fetch a manifest by tag or digest; its bytes are checked against any digest known."""
        url = self._url(registry, repository, "manifests", reference)
        name = _display(registry, repository, reference)
        async with self._request(
            "GET", url, registry, repository, headers={"Accept": MANIFEST_ACCEPT}
        ) as resp:
            if resp.status != 200:
                await self._raise(resp, registry, repository, name, "manifest")
            if (resp.content_length or 0) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"manifest of {name} is larger than {MAX_MANIFEST_BYTES} bytes")
            raw = await self._read_body(resp, registry, MAX_MANIFEST_BYTES)
            media_type = resp.content_type
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        digest = _sha256(raw)
        expected = reference if reference.startswith("sha256:") else header_digest
        if expected.startswith("sha256:") and expected != digest:
            raise DigestMismatch(
                f"manifest of {name} from {registry} hashes to {digest}, expected {expected}"
            )
        if media_type in ("", "application/octet-stream", "text/plain", "application/json"):
            media_type = str(_json_field(raw, "mediaType") or MEDIA_OCI_MANIFEST)
        return Manifest(raw, media_type, digest)

    async def head_manifest(self, registry: str, repository: str, reference: str) -> str | None:
        """The manifest digest a tag points at, or None when the registry lacks it."""
        url = self._url(registry, repository, "manifests", reference)
        name = _display(registry, repository, reference)
        async with self._request(
            "HEAD", url, registry, repository, headers={"Accept": MANIFEST_ACCEPT}
        ) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                await self._raise(resp, registry, repository, name, "manifest")
            digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        return (await self.get_manifest(registry, repository, reference)).digest

    async def put_manifest(
        self, registry: str, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        """Upload *raw* unchanged (its digest is the model id) under a tag; returns the digest."""
        url = self._url(registry, repository, "manifests", reference)
        name = _display(registry, repository, reference)
        async with self._request(
            "PUT",
            url,
            registry,
            repository,
            push=True,
            headers={"Content-Type": media_type},
            data=raw,
        ) as resp:
            if resp.status not in (200, 201, 202):
                await self._raise(resp, registry, repository, name, "manifest upload")
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        digest = _sha256(raw)
        if header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatch(
                f"registry {registry} stored the manifest of {name} as {header_digest}, "
                f"expected {digest}"
            )
        return digest

    # -- blobs -----------------------------------------------------------------------------

    async def blob_exists(self, registry: str, repository: str, digest: str) -> bool:
        url = self._url(registry, repository, "blobs", digest)
        async with self._request("HEAD", url, registry, repository) as resp:
            if resp.status == 404:
                return False
            if resp.status != 200:
                await self._raise(resp, registry, repository, digest, "blob")
            return True

    @contextlib.asynccontextmanager
    async def get_blob(
        self, registry: str, repository: str, digest: str, *, offset: int = 0
    ) -> AsyncIterator[BlobStream]:
        """Stream a blob from *offset*; ``stream.offset`` says where the bytes really start.

        A resume is honoured only when the registry answers 206 with a Content-Range that
        starts at *offset*; otherwise the blob is fetched from 0 and ``offset`` is 0.
        """
        resp, start, total = await self._open_blob(registry, repository, digest, offset)
        chunks = self._chunks(resp, registry, digest)
        try:
            yield BlobStream(start, total, chunks)
        finally:
            await chunks.aclose()
            resp.release()  # closes the connection when the body was not read to the end

    async def _open_blob(
        self, registry: str, repository: str, digest: str, offset: int
    ) -> tuple[aiohttp.ClientResponse, int, int | None]:
        url = self._url(registry, repository, "blobs", digest)
        headers = {"Accept-Encoding": "identity"}  # the bytes must hash to the digest
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        resp = await self._send("GET", url, registry, repository, headers=headers)
        try:
            if offset > 0 and resp.status == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if m and int(m.group(1)) == offset:
                    total = None if m.group(3) == "*" else int(m.group(3))
                    return resp, offset, total
                log.info("registry.range_ignored", digest=digest, offset=offset)
            elif offset > 0 and resp.status == 416:
                log.info("registry.range_unsatisfiable", digest=digest, offset=offset)
            elif resp.status == 200:
                return resp, 0, resp.content_length
            else:
                await self._raise(resp, registry, repository, digest, "blob")
        except BaseException:
            resp.release()
            raise
        resp.release()
        return await self._open_blob(registry, repository, digest, 0)

    async def _chunks(
        self, resp: aiohttp.ClientResponse, registry: str, digest: str
    ) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in resp.content.iter_chunked(CHUNK_SIZE):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RegistryError(
                f"download of {digest} from {registry} broke off: {_describe(e)}"
            ) from e

    async def upload_blob(
        self,
        registry: str,
        repository: str,
        digest: str,
        size: int,
        chunks: AsyncIterator[bytes],
    ) -> None:
        """Upload a blob streamed from *chunks* (never held whole); a no-op if it exists."""
        try:
            if await self.blob_exists(registry, repository, digest):
                return
            start = URL(f"{self._base(registry)}/v2/{repository}/blobs/uploads/", encoded=True)
            async with self._request("POST", start, registry, repository, push=True) as resp:
                if resp.status == 201:  # some registries complete (mount) at once
                    return
                if resp.status != 202 or "Location" not in resp.headers:
                    await self._raise(resp, registry, repository, digest, "blob upload")
                location = resp.headers["Location"]
            # Location is relative on distribution and absolute elsewhere; keep its _state.
            sep = "&" if "?" in location else "?"
            target = f"{location}{sep}digest={quote(digest, safe=':')}"
            put_url = URL(self._base(registry), encoded=True).join(URL(target, encoded=True))
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            async with self._request(
                "PUT", put_url, registry, repository, push=True, headers=headers, data=chunks
            ) as resp:
                if resp.status not in (201, 204):
                    await self._raise(resp, registry, repository, digest, "blob upload")
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- requests, retries, auth -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        url: URL,
        registry: str,
        repository: str,
        *,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        data: bytes | AsyncIterator[bytes] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        resp = await self._send(
            method, url, registry, repository, push=push, headers=headers, data=data
        )
        try:
            yield resp
        finally:
            resp.release()

    async def _send(
        self,
        method: str,
        url: URL,
        registry: str,
        repository: str,
        *,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        data: bytes | AsyncIterator[bytes] | None = None,
    ) -> aiohttp.ClientResponse:
        """One request with auth, bounded retries and translated connection errors.

        A streamed body cannot be replayed: such a request is neither retried nor
        re-authenticated (the upload session's POST has already fetched the token).
        """
        replayable = data is None or isinstance(data, bytes)
        idempotent = method in ("GET", "HEAD", "PUT", "POST") and replayable
        attempt = 0
        authed_retry = False
        while True:
            hdrs = dict(headers or {})
            authz = await self._authorization(registry, repository, push)
            if authz:
                hdrs["Authorization"] = authz
            try:
                resp = await self._http().request(method, url, headers=hdrs, data=data)
            except aiohttp.ClientConnectorError as e:  # nothing was sent: always safe to retry
                if replayable and attempt < RETRIES:
                    attempt += 1
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise RegistryError(f"cannot reach registry {registry}: {_describe(e)}") from e
            except (aiohttp.ClientError, TimeoutError) as e:
                if idempotent and attempt < RETRIES:
                    attempt += 1
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise RegistryError(
                    f"registry {registry}: {method} {url.path} failed: {_describe(e)}"
                ) from e
            if resp.status == 401 and replayable and not authed_retry:
                challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
                if challenge is not None and await self._on_challenge(
                    registry, repository, push, challenge, sent=authz
                ):
                    resp.release()
                    authed_retry = True
                    continue
            if resp.status >= 500 and idempotent and attempt < RETRIES:
                resp.release()
                attempt += 1
                log.info("registry.retry", registry=registry, status=resp.status, attempt=attempt)
                await asyncio.sleep(_backoff(attempt))
                continue
            return resp

    async def _authorization(self, registry: str, repository: str, push: bool) -> str | None:
        """The Authorization header for a request, once the registry has challenged us."""
        challenge = self._challenges.get(registry)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = await self._credentials(registry)
            return creds.basic_header() if creds else None
        scope = scope_for(repository, push)
        token = self._tokens.get(registry, scope)
        if token is None:
            token = await self._fetch_token(registry, challenge, scope)
        return f"Bearer {token}"

    async def _on_challenge(
        self, registry: str, repository: str, push: bool, challenge: Challenge, sent: str | None
    ) -> bool:
        """Learn from a 401; True when a retry with (new) credentials makes sense."""
        self._challenges[registry] = challenge
        if challenge.scheme == "basic":
            # Sent Basic and refused: the password is wrong; retrying would not help.
            return not (sent and sent.startswith("Basic ")) and (
                await self._credentials(registry) is not None
            )
        # A token refused (expired early, revoked): drop it and fetch a fresh one once.
        self._tokens.drop(registry, scope_for(repository, push))
        return True

    async def _credentials(self, registry: str) -> Credentials | None:
        return await asyncio.to_thread(load_credentials, self._docker_config, registry)

    async def _fetch_token(self, registry: str, challenge: Challenge, scope: str) -> str:
        lock = self._token_locks.setdefault((registry, scope), asyncio.Lock())
        async with lock:
            cached = self._tokens.get(registry, scope)
            if cached is not None:
                return cached
            creds = await self._credentials(registry)
            params = {"scope": scope}
            if challenge.service:
                params["service"] = challenge.service
            headers = {"Authorization": creds.basic_header()} if creds else {}
            self.token_requests += 1
            try:
                async with self._http().get(
                    URL(challenge.realm).update_query(params), headers=headers
                ) as resp:
                    body = await self._read_body(resp, registry, 1 << 20)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as e:
                raise RegistryError(
                    f"cannot reach the token service {challenge.realm} of registry {registry}: "
                    f"{_describe(e)}"
                ) from e
            if status in (401, 403):
                who = f"user {creds.username!r}" if creds else "anonymous access"
                raise RegistryAuthError(
                    f"the token service of registry {registry} refused {who}; "
                    f"{self._login_hint(registry)}"
                )
            if status != 200:
                raise RegistryError(
                    f"the token service of registry {registry} answered {status}: "
                    f"{_registry_errors(body)[1]}"
                )
            token = _json_field(body, "token") or _json_field(body, "access_token")
            if not isinstance(token, str) or not token:
                raise RegistryError(f"the token service of registry {registry} sent no token")
            expires = _json_field(body, "expires_in")
            self._tokens.put(
                registry, scope, token, float(expires) if isinstance(expires, int | float) else None
            )
            return token

    # -- errors ----------------------------------------------------------------------------

    def _login_hint(self, registry: str) -> str:
        return (
            f"to log in, put credentials for {registry} in {self._docker_config} "
            f"(`docker login {registry}` writes them)"
        )

    async def _raise(
        self,
        resp: aiohttp.ClientResponse,
        registry: str,
        repository: str,
        name: str,
        what: Literal["manifest", "manifest upload", "blob", "blob upload"],
    ) -> None:
        """Turn an unexpected answer into our error, with the registry's own message."""
        body = await self._read_body(resp, registry, 64 << 10) if resp.method != "HEAD" else b""
        code, message = _registry_errors(body)
        detail = f"{code}: {message}" if code else (message or resp.reason or "")
        if resp.status == 404 and what == "manifest" and (code in _NOT_FOUND_CODES or not code):
            raise ModelNotFound(
                name, f"model {name} was not found in the registry {registry} ({detail})"
            )
        if resp.status in (401, 403):
            action = "push to" if what.endswith("upload") else "pull from"
            raise RegistryAuthError(
                f"registry {registry} refused to let us {action} {repository} "
                f"({resp.status} {detail}); {self._login_hint(registry)}"
            )
        raise RegistryError(
            f"registry {registry} refused the {what} of {name}: {resp.status} {detail}".rstrip()
        )

    async def _read_body(self, resp: aiohttp.ClientResponse, registry: str, limit: int) -> bytes:
        try:
            body = await resp.content.read(limit + 1)
            while len(body) <= limit and not resp.content.at_eof():
                more = await resp.content.read(limit + 1 - len(body))
                if not more:
                    break
                body += more
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RegistryError(
                f"registry {registry}: reading the answer failed: {_describe(e)}"
            ) from e
        if len(body) > limit:
            raise RegistryError(f"registry {registry} sent an answer larger than {limit} bytes")
        return body


def _json_field(body: bytes, key: str) -> object:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def _backoff(attempt: int) -> float:
    return float(min(0.25 * 2 ** (attempt - 1), 2.0))


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return (e.os_error.strerror or str(e.os_error)).lower()
    if isinstance(e, TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__
