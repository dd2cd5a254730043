"""Push: stream a local model's blobs to a registry, then its manifest bytes unchanged.

Each layer is read from its blob in 2 MiB chunks in a worker thread, the next read while the
current one is sent; layers go in parallel, then the config, then the stored manifest (so the
model id is the same on both sides).  A blob whose stat stamp shows it unchanged since it was
hashed on the way in (``stamps.py``) is sent as it is: the registry checks its digest, and a
DIGEST_INVALID is confirmed by hashing the blob here before it is called corrupt.  Any other
blob is hashed on the way, so a corrupt one fails before the registry sees its last byte.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ..errors import DigestMismatch, InvalidReference, RegistryError, StoreError
from . import stamps
from .artifact import Descriptor, parse_manifest
from .model import MIB, ProgressFn
from .pull import PARALLEL_LAYERS, Reporter, all_or_nothing, unique
from .reference import parse_reference

if TYPE_CHECKING:
    from .local import LocalStore

log = structlog.get_logger(__name__)
READ_CHUNK = 2 * MIB


async def push(store: LocalStore, name: str, progress: ProgressFn | None) -> None:
    """Push the local model *name* to the registry and tag its reference names."""
    ref = parse_reference(name)
    if ref.tag is None:
        raise InvalidReference(f"{name!r}: push needs a tag (name:tag), not a digest")
    model, raw = await store.read_manifest(name)
    parsed = parse_manifest(raw, ref.display)
    client = store.registry()
    reporter = Reporter(progress, "push", parsed.layer_bytes)
    sem = asyncio.Semaphore(PARALLEL_LAYERS)

    async def upload(desc: Descriptor, on_bytes: Callable[[int], None] | None) -> None:
        path = store.layout.blob(desc.digest)
        trusted = await asyncio.to_thread(stamps.still_verified, path)
        chunks = _file_chunks(path, desc, on_bytes, check=not trusted)
        try:
            await client.upload_blob(ref.registry, ref.repository, desc.digest, desc.size, chunks)
        except RegistryError as e:
            if not trusted or e.registry_code != "DIGEST_INVALID":
                raise
            if await asyncio.to_thread(_hashes_to, path, desc.digest):
                raise  # our bytes are right: the registry's answer stands as it is
            await asyncio.to_thread(stamps.forget, path)
            raise _corrupt(desc) from e

    async def one(desc: Descriptor) -> None:
        async with sem:
            await upload(desc, lambda n: reporter.update(desc, n))
            reporter.update(desc, desc.size, force=True)

    log.info("store.push_started", ref=ref.store_name, model=model.id)
    await all_or_nothing([one(d) for d in unique(parsed.layers)])
    await upload(parsed.config, None)
    await client.put_manifest(ref.registry, ref.repository, ref.reference, raw, parsed.media_type)
    log.info("store.pushed", ref=ref.store_name, model=model.id)
    reporter.finish("success", "Model pushed successfully")


def _corrupt(desc: Descriptor) -> DigestMismatch:
    return DigestMismatch(f"the store's blob {desc.digest} is corrupt; pull it again")


def _hashes_to(path: Path, digest: str) -> bool:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(READ_CHUNK):
                h.update(block)
    except OSError:
        return False
    return "sha256:" + h.hexdigest() == digest


async def _file_chunks(
    path: Path, desc: Descriptor, on_bytes: Callable[[int], None] | None, *, check: bool
) -> AsyncGenerator[bytes, None]:
    """A blob read in a thread, the next chunk read while the current one is sent; with
    *check*, hashed on the way too (a corrupt blob fails before its last byte is sent)."""
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except OSError as e:
        raise StoreError(f"blob {desc.digest} is missing from the store: {e.strerror}") from e
    h = hashlib.sha256() if check else None
    sent = 0

    def read() -> bytes:
        block = f.read(READ_CHUNK)
        if h is not None:
            h.update(block)
        return block

    ahead: asyncio.Future[bytes] | None = None
    try:
        ahead = asyncio.ensure_future(asyncio.to_thread(read))
        while block := await ahead:
            sent += len(block)
            if h is not None and sent == desc.size and "sha256:" + h.hexdigest() != desc.digest:
                raise _corrupt(desc)
            ahead = asyncio.ensure_future(asyncio.to_thread(read))
            if on_bytes is not None:
                on_bytes(sent)
            yield block
    finally:
        if ahead is not None and not ahead.done():
            await asyncio.wait([ahead])  # never close the file under a read in flight
        await asyncio.to_thread(f.close)
