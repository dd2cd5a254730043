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
from ..errors import (
    DigestMismatch,
    ModelNotFound,
    ModelRunnerError,
    RegistryAuthError,
    RegistryError,
)
from .auth import Authenticator, api_host, parse_challenge
from .wire import describe, json_field, plain_http_allowed, read_body, registry_errors

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


def _display(registry: str, repository: str, reference: str) -> str:
    sep = "@" if reference.startswith("sha256:") else ":"
    return f"{registry}/{repository}{sep}{reference}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    """Talks to OCI registries for the store; one per store, shared by concurrent operations."""

    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._docker_config = Path(config.docker_config).expanduser()
        self._insecure = frozenset(r.lower() for r in config.insecure_registries)
        self._timeout = aiohttp.ClientTimeout(
            total=None,  # a 4 GB blob may take long; a stalled socket is the error
            sock_connect=config.registry_timeout_s,
            sock_read=config.registry_timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self.auth = Authenticator(self._docker_config, self._http, self._insecure)

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
        return "http" if plain_http_allowed(registry, self._insecure) else "https"

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
            raw = await read_body(resp, registry, MAX_MANIFEST_BYTES)
            media_type = resp.content_type
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        digest = _sha256(raw)
        expected = reference if reference.startswith("sha256:") else header_digest
        if expected.startswith("sha256:") and expected != digest:
            raise DigestMismatch(
                f"manifest of {name} from {registry} hashes to {digest}, expected {expected}"
            )
        if media_type in ("", "application/octet-stream", "text/plain", "application/json"):
            media_type = str(json_field(raw, "mediaType") or MEDIA_OCI_MANIFEST)
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

    async def blob_exists(
        self, registry: str, repository: str, digest: str, *, for_push: bool = False
    ) -> bool:
        """HEAD the blob; *for_push* asks for the push token at once (one token per push)."""
        url = self._url(registry, repository, "blobs", digest)
        async with self._request("HEAD", url, registry, repository, push=for_push) as resp:
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
                f"download of {digest} from {registry} broke off: {describe(e)}"
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
            if await self.blob_exists(registry, repository, digest, for_push=True):
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
            body = _exactly(chunks, size, digest)
            async with self._request(
                "PUT", put_url, registry, repository, push=True, headers=headers, data=body
            ) as resp:
                if resp.status not in (201, 204):
                    await self._raise(resp, registry, repository, digest, "blob upload")
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await _left_by_writer(chunks)
                with contextlib.suppress(RuntimeError):  # still running: its task closes it
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
            authz = await self.auth.header(registry, repository, push)
            if authz:
                hdrs["Authorization"] = authz
            try:
                resp = await self._http().request(method, url, headers=hdrs, data=data)
            except aiohttp.ClientConnectorError as e:  # nothing was sent: always safe to retry
                if replayable and attempt < RETRIES:
                    attempt += 1
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise RegistryError(f"cannot reach registry {registry}: {describe(e)}") from e
            except (aiohttp.ClientError, TimeoutError) as e:
                if (ours := _our_error(e)) is not None:
                    raise ours from e  # the body's iterator failed (sizes, the caller's file)
                if idempotent and attempt < RETRIES:
                    attempt += 1
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise RegistryError(
                    f"registry {registry}: {method} {url.path} failed: {describe(e)}"
                ) from e
            if resp.status == 401 and replayable and not authed_retry:
                challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
                if challenge is not None and await self.auth.on_challenge(
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

    # -- errors ----------------------------------------------------------------------------

    async def _raise(
        self,
        resp: aiohttp.ClientResponse,
        registry: str,
        repository: str,
        name: str,
        what: Literal["manifest", "manifest upload", "blob", "blob upload"],
    ) -> None:
        """Turn an unexpected answer into our error, with the registry's own message."""
        body = await read_body(resp, registry, 64 << 10) if resp.method != "HEAD" else b""
        code, message = registry_errors(body)
        detail = f"{code}: {message}" if code else (message or resp.reason or "")
        if resp.status == 404 and what == "manifest" and (code in _NOT_FOUND_CODES or not code):
            raise ModelNotFound(
                name, f"model {name} was not found in the registry {registry} ({detail})"
            )
        if resp.status in (401, 403):
            action = "push to" if what.endswith("upload") else "pull from"
            maybe = "" if action == "push to" else "it may not exist, or it needs credentials; "
            raise RegistryAuthError(
                f"registry {registry} refused to let us {action} {repository} "
                f"({resp.status} {detail}); {maybe}{self.auth.login_hint(registry)}"
            )
        raise RegistryError(
            f"registry {registry} refused the {what} of {name}: {resp.status} {detail}".rstrip(),
            code,
        )


async def _left_by_writer(gen: object, timeout_s: float = 5.0) -> None:
    """Wait (bounded) until aiohttp's body writer has left *gen*: the registry can answer
    before the writer finished the generator's last step (a read-ahead, a final check), and
    closing a running async generator raises RuntimeError. No event marks it: poll."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while getattr(gen, "ag_running", False):  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.005)


async def _exactly(
    chunks: AsyncIterator[bytes], size: int, digest: str
) -> AsyncGenerator[bytes, None]:
    """Pass *chunks* through, failing when they are not exactly *size* bytes."""
    sent = 0
    async for chunk in chunks:
        sent += len(chunk)
        if sent > size:
            raise RegistryError(f"blob {digest} is larger than the {size} bytes announced")
        yield chunk
    if sent != size:
        raise RegistryError(f"blob {digest} ended after {sent} of the {size} bytes announced")


def _our_error(e: BaseException) -> ModelRunnerError | None:
    """Our own error raised inside a streamed body, which aiohttp wraps as a connection error."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ModelRunnerError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _backoff(attempt: int) -> float:
    return float(min(0.25 * 2 ** (attempt - 1), 2.0))
