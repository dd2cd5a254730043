"""Push: stream a local model's blobs to a registry, then its manifest bytes unchanged.

Each layer is read from its blob in 1 MiB chunks in a worker thread and hashed on the way (a
corrupt local blob fails loudly instead of being uploaded); layers go in parallel, then the
config, then the stored manifest (so the model id is the same on both sides).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ..errors import DigestMismatch, InvalidReference, StoreError
from .artifact import Descriptor, parse_manifest
from .model import MIB, ProgressFn
from .pull import PARALLEL_LAYERS, Reporter, all_or_nothing, unique
from .reference import parse_reference

if TYPE_CHECKING:
    from .store import Store

log = structlog.get_logger(__name__)
READ_CHUNK = 2 * MIB


async def push(store: Store, name: str, progress: ProgressFn | None) -> None:
    """Push the local model *name* to the registry and tag its reference names."""
    ref = parse_reference(name)
    if ref.tag is None:
        raise InvalidReference(f"{name!r}: push needs a tag (name:tag), not a digest")
    model, raw = await store.read_manifest(name)
    parsed = parse_manifest(raw, ref.display)
    client = store.registry()
    reporter = Reporter(progress, "push", parsed.layer_bytes)
    sem = asyncio.Semaphore(PARALLEL_LAYERS)

    async def one(desc: Descriptor) -> None:
        async with sem:
            path = store.layout.blob(desc.digest)
            chunks = _file_chunks(path, desc, lambda n: reporter.update(desc, n))
            await client.upload_blob(ref.registry, ref.repository, desc.digest, desc.size, chunks)
            reporter.update(desc, desc.size, force=True)

    log.info("store.push_started", ref=ref.store_name, model=model.id)
    await all_or_nothing([one(d) for d in unique(parsed.layers)])
    cfg = parsed.config
    await client.upload_blob(
        ref.registry,
        ref.repository,
        cfg.digest,
        cfg.size,
        _file_chunks(store.layout.blob(cfg.digest), cfg, None),
    )
    await client.put_manifest(ref.registry, ref.repository, ref.reference, raw, parsed.media_type)
    log.info("store.pushed", ref=ref.store_name, model=model.id)
    reporter.finish("success", "Model pushed successfully")


async def _file_chunks(
    path: Path, desc: Descriptor, on_bytes: Callable[[int], None] | None
) -> AsyncGenerator[bytes, None]:
    """A blob read in a thread, hashed on the way (a corrupt blob fails); the next chunk is
    read and hashed while the current one is sent."""
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except OSError as e:
        raise StoreError(f"blob {desc.digest} is missing from the store: {e.strerror}") from e
    h = hashlib.sha256()
    sent = 0

    def read() -> bytes:
        block = f.read(READ_CHUNK)
        h.update(block)
        return block

    ahead: asyncio.Future[bytes] | None = None
    try:
        ahead = asyncio.ensure_future(asyncio.to_thread(read))
        while block := await ahead:
            sent += len(block)
            if sent == desc.size and "sha256:" + h.hexdigest() != desc.digest:
                raise DigestMismatch(f"the store's blob {desc.digest} is corrupt; pull it again")
            ahead = asyncio.ensure_future(asyncio.to_thread(read))
            if on_bytes is not None:
                on_bytes(sent)
            yield block
    finally:
        if ahead is not None and not ahead.done():
            await asyncio.wait([ahead])  # never close the file under a read in flight
        await asyncio.to_thread(f.close)
