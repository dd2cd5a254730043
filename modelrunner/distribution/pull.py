"""Pull: stream blobs from a registry into the store, verified while they flow.

Pull: manifest (digest-checked by the client), config blob (size- and digest-checked), a
free-space check, then the layers in parallel.  Each layer streams into
``blobs/sha256/<hex>.incomplete`` (``flock``ed, so another process never writes the same file),
hashed as it is written in ~4 MiB batches in a worker thread overlapped with receiving the next;
an interrupted layer keeps its ``.incomplete`` and the next pull resumes it with ``Range`` after
hashing the prefix; the complete file is size- and digest-checked, fsynced and renamed.  Only
then is the model committed.  Concurrent pulls of one reference in this process share one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import structlog

from ..errors import (
    DigestMismatch,
    InsufficientStorage,
    RegistryError,
    StoreError,
)
from ..fsmodes import FILE_MODE
from . import stamps
from .artifact import Descriptor, config_object, parse_manifest
from .gguf import format_size
from .layout import atomic_write, fsync_dir, os_error
from .model import MIB, Model, ProgressEvent, ProgressFn, ProgressMode
from .reference import Reference

if TYPE_CHECKING:
    from .local import LocalStore

log = structlog.get_logger(__name__)
BATCH = 4 * MIB
PARALLEL_LAYERS = 4
STREAM_RESUMES = 3  # a stream that breaks mid-blob is resumed this many times in one pull
EMIT_INTERVAL_S = 0.1
MAX_CONFIG_BYTES = 4 << 20
LOCK_POLL_S = 0.1  # another process is downloading the same blob: look again this often


class _StreamBroke(Exception):
    """A blob stream broke after bytes arrived: resumable from what was written."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


class Reporter:
    """Per-layer progress, rate-limited as Docker's reporter is (100 ms or 1 MiB or done)."""

    def __init__(self, progress: ProgressFn | None, mode: ProgressMode, total: int) -> None:
        self._progress = progress
        self._mode = mode
        self.total = total
        self._current: dict[str, int] = {}
        self._last: dict[str, tuple[float, int]] = {}

    def update(self, desc: Descriptor, current: int, *, force: bool = False) -> None:
        self._current[desc.digest] = current
        if self._progress is None:
            return
        now = time.monotonic()
        last = self._last.get(desc.digest)
        if not (
            force
            or last is None
            or current >= desc.size
            or now - last[0] >= EMIT_INTERVAL_S
            or current - last[1] >= MIB
        ):
            return
        self._last[desc.digest] = (now, current)
        verb = "Uploaded" if self._mode == "push" else "Downloaded"
        self.emit(
            ProgressEvent(
                kind="progress",
                message=f"{verb}: {current / MIB:.2f} MB",
                mode=self._mode,
                digest=desc.digest,
                layer_size=desc.size,
                layer_current=current,
                current=sum(self._current.values()),
                total=self.total,
            )
        )

    def emit(self, event: ProgressEvent) -> None:
        if self._progress is not None:
            try:
                self._progress(event)
            except Exception:  # a broken listener must not break the transfer
                log.exception("store.progress_callback_failed")

    def finish(self, kind: str, message: str) -> None:
        self.emit(
            ProgressEvent(
                kind="success" if kind == "success" else "warning",
                message=message,
                mode=self._mode,
            )
        )


# -- pull --------------------------------------------------------------------------------------


async def pull(store: LocalStore, ref: Reference, progress: ProgressFn | None) -> Model:
    """Pull *ref*; a second caller for the same reference joins the pull in progress."""
    key = ref.store_name
    task = store._pulls.get(key)
    joined = task is not None
    if task is None:
        task = asyncio.create_task(_pull(store, ref, progress), name=f"pull {key}")
        store._pulls[key] = task
        task.add_done_callback(lambda t: _forget(store, key, t))
    model = await asyncio.shield(task)
    if joined:
        Reporter(progress, "pull", model.size_bytes).finish("success", "Model pulled successfully")
    return model


def _forget(store: LocalStore, key: str, task: asyncio.Task[Model]) -> None:
    if store._pulls.get(key) is task:
        del store._pulls[key]
    if not task.cancelled() and task.exception() is not None:
        log.info("store.pull_failed", ref=key, error=str(task.exception()))


async def _pull(store: LocalStore, ref: Reference, progress: ProgressFn | None) -> Model:
    async with store._pull_slots:
        client = store.registry()
        manifest = await client.get_manifest(ref.registry, ref.repository, ref.reference)
        parsed = parse_manifest(manifest.raw, ref.display)
        tag = ref.store_name if ref.tag is not None else None
        reporter = Reporter(progress, "pull", parsed.layer_bytes)
        cached = await _cached(store, manifest.digest)
        if cached:
            model = await store.commit(manifest.raw, parsed, tag)
            size = model.config.get("size") or format_size(parsed.layer_bytes)
            reporter.finish("success", f"Using cached model: {size}")
            return model
        log.info("store.pull_started", ref=ref.store_name, model=manifest.digest)
        await _check_space(store, [parsed.config, *parsed.layers])
        sem = asyncio.Semaphore(PARALLEL_LAYERS)

        async def one(desc: Descriptor) -> None:
            async with sem:
                await fetch_blob(store, ref, desc, reporter)

        with contextlib.ExitStack() as held:  # gc/remove here keep them until the commit
            for digest in parsed.files:
                held.enter_context(store.writing(digest))
            await _fetch_config(store, ref, parsed.config)
            await all_or_nothing([one(d) for d in unique(parsed.layers)])
            model = await store.commit(manifest.raw, parsed, tag)
        log.info("store.pulled", ref=ref.store_name, model=model.id)
        reporter.finish("success", "Model pulled successfully")
        return model


def unique(descs: Iterable[Descriptor]) -> list[Descriptor]:
    """One descriptor per digest (a layer listed twice is fetched once)."""
    return list({d.digest: d for d in descs}.values())


async def all_or_nothing(coros: list[Awaitable[None]]) -> None:
    """Run together; the first failure cancels the rest and is raised as itself."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        for fut in asyncio.as_completed(tasks):
            await fut
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _cached(store: LocalStore, model_id: str) -> bool:
    def check() -> bool:
        entry = store._index().find(model_id)
        if entry is None or not store.layout.manifest(model_id).exists():
            return False
        return all(store.layout.blob(d).exists() for d in entry.files)

    return await asyncio.to_thread(check)


async def _check_space(store: LocalStore, descs: list[Descriptor]) -> None:
    """Refuse a pull that cannot fit, before a byte is written (keeping ``min_free_bytes``)."""
    lay = store.layout

    def need_and_free() -> tuple[int, int]:
        need = 0
        for d in unique(descs):
            if lay.blob(d.digest).exists():
                continue
            try:
                have = lay.incomplete(d.digest).stat().st_size
            except FileNotFoundError:
                have = 0
            need += max(0, d.size - have)
        return need, shutil.disk_usage(lay.blobs_dir).free

    need, free = await asyncio.to_thread(need_and_free)
    if need + store.config.min_free_bytes > free:
        raise InsufficientStorage(
            f"not enough free space in {store.root}: the pull needs {format_size(need)} more, "
            f"{format_size(free)} is free and {format_size(store.config.min_free_bytes)} is kept"
        )


async def _fetch_config(store: LocalStore, ref: Reference, desc: Descriptor) -> None:
    path = store.layout.blob(desc.digest)
    if await asyncio.to_thread(path.exists):
        return
    if desc.size > MAX_CONFIG_BYTES:
        raise StoreError(f"the config of {ref.display} is {desc.size} bytes; refusing it")
    data = bytearray()
    async with store.registry().get_blob(ref.registry, ref.repository, desc.digest) as stream:
        async for chunk in stream.chunks:
            data += chunk
            if len(data) > desc.size:
                break
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if len(data) != desc.size or got != desc.digest:
        raise DigestMismatch(
            f"config blob digest mismatch for {desc.digest}: got {got} ({len(data)} bytes, "
            f"expected {desc.size})"
        )
    if not config_object(bytes(data))[0]:
        log.warning("store.config_without_format", ref=ref.display)
    try:
        await asyncio.to_thread(atomic_write, path, bytes(data))
    except OSError as e:
        raise os_error(e, "writing a config blob") from e


class _Partial:
    """An open, locked ``.incomplete`` file and the hash of what it holds."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def reset(self) -> None:
        self.f.seek(0)
        self.f.truncate()
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, bufs: list[bytes]) -> None:
        for b in bufs:
            self.h.update(b)
        self.f.writelines(bufs)
        self.size += sum(len(b) for b in bufs)

    def hash_prefix(self, limit: int) -> None:
        self.f.seek(0)
        while block := self.f.read(BATCH):
            self.h.update(block)
            self.size += len(block)
            if self.size > limit:
                self.reset()
                return
        self.f.seek(self.size)


def _try_open_partial(path: Path) -> _Partial | None:
    """Open and ``flock`` *path*; None while another process holds it (it is writing it).

    The lock is only good while the path still names the file we locked (the holder may have
    renamed it into place or deleted it meanwhile): otherwise open the path again.
    """
    while True:
        f = open(path, "a+b")  # noqa: SIM115 - closed by _close_partial
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return None
            mine = os.fstat(f.fileno())
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            f.close()
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return _Partial(f)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


async def _open_partial(path: Path) -> _Partial:
    """Wait (without holding a worker thread) until no other process writes *path*."""
    waited = False
    while (part := await asyncio.to_thread(_try_open_partial, path)) is None:
        if not waited:
            log.info("store.blob_busy", path=path.name)
            waited = True
        await asyncio.sleep(LOCK_POLL_S)
    return part


def _close_partial(p: _Partial) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(p.f.fileno(), fcntl.LOCK_UN)
    # A committed blob was flushed and fsynced already; after a failed write (ENOSPC) the buffered
    # close fails again flushing and would replace the translated error.  Its fd closes anyway.
    with contextlib.suppress(OSError):
        p.f.close()


async def fetch_blob(
    store: LocalStore, ref: Reference, desc: Descriptor, reporter: Reporter
) -> None:
    """Make ``blobs/sha256/<hex>`` hold *desc*'s verified bytes (resuming, once per digest)."""
    lay = store.layout
    final, partial_path = lay.blob(desc.digest), lay.incomplete(desc.digest)
    async with store.blob_lock(desc.digest):
        with store.writing(desc.digest):
            if await asyncio.to_thread(final.exists):
                reporter.update(desc, desc.size, force=True)
                return
            try:
                part = await _open_partial(partial_path)
            except OSError as e:
                raise os_error(e, f"opening {partial_path}") from e
            try:
                await _fill(store, ref, desc, part, final, partial_path, reporter)
            finally:
                await asyncio.to_thread(_close_partial, part)


async def _fill(
    store: LocalStore,
    ref: Reference,
    desc: Descriptor,
    part: _Partial,
    final: Path,
    partial_path: Path,
    reporter: Reporter,
) -> None:
    try:
        if await asyncio.to_thread(final.exists):  # another process finished it meanwhile
            await asyncio.to_thread(_unlink, partial_path)
            reporter.update(desc, desc.size, force=True)
            return
        await asyncio.to_thread(part.hash_prefix, desc.size)
        if part.size:
            log.info("store.resume", digest=desc.digest, offset=part.size, size=desc.size)
        resumes = 0
        while part.size < desc.size:
            try:
                await _stream_into(store, ref, desc, part, reporter)
            except _StreamBroke as e:
                if resumes >= STREAM_RESUMES:
                    raise e.error from e.error.__cause__
                resumes += 1
                log.warning("store.stream_resumed", digest=desc.digest, offset=part.size)
                continue
            if part.size < desc.size:
                raise RegistryError(
                    f"the registry ended blob {desc.digest} after {part.size} of {desc.size} bytes"
                )
        _verify(part, desc)
        await asyncio.to_thread(_commit_blob, part, partial_path, final)
        reporter.update(desc, desc.size, force=True)
    except OSError as e:
        err = os_error(e, f"writing {partial_path.name}")
        if isinstance(err, InsufficientStorage):  # give the space back
            await asyncio.to_thread(_unlink, partial_path)
        raise err from e
    except (InsufficientStorage, DigestMismatch):  # no use keeping bytes we cannot trust
        await asyncio.to_thread(_unlink, partial_path)
        raise


def _verify(part: _Partial, desc: Descriptor) -> None:
    got = "sha256:" + part.h.hexdigest()
    if part.size != desc.size or got != desc.digest:
        raise DigestMismatch(
            f"blob digest mismatch for {desc.digest!r}: expected {desc.digest}, got {got}"
        )


def _commit_blob(part: _Partial, partial_path: Path, final: Path) -> None:
    part.f.flush()
    os.fsync(part.f.fileno())
    os.chmod(partial_path, FILE_MODE)
    os.replace(partial_path, final)
    fsync_dir(final.parent)
    stamps.record(final)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _stream_into(
    store: LocalStore, ref: Reference, desc: Descriptor, part: _Partial, reporter: Reporter
) -> None:
    """One GET from ``part.size`` on; batches hashed and written in a thread, overlapped."""
    client = store.registry()
    async with client.get_blob(
        ref.registry, ref.repository, desc.digest, offset=part.size
    ) as stream:
        if stream.offset != part.size:  # the registry ignored the Range: start over
            await asyncio.to_thread(part.reset)
        if stream.total is not None and stream.total != desc.size:
            raise DigestMismatch(
                f"registry says blob {desc.digest} has {stream.total} bytes; "
                f"the manifest says {desc.size}"
            )
        reporter.update(desc, part.size, force=True)
        pending: asyncio.Future[None] | None = None
        bufs: list[bytes] = []
        n = 0
        received = part.size
        try:
            try:
                async for chunk in stream.chunks:
                    received += len(chunk)
                    if received > desc.size:
                        raise DigestMismatch(
                            f"registry sent more than the {desc.size} bytes of {desc.digest}"
                        )
                    bufs.append(chunk)
                    n += len(chunk)
                    if n >= BATCH:
                        if pending is not None:
                            await pending
                            reporter.update(desc, part.size)
                        pending = asyncio.ensure_future(asyncio.to_thread(part.write, bufs))
                        bufs, n = [], 0
            except RegistryError as e:
                raise _StreamBroke(e) from e
            finally:
                if pending is not None:
                    await pending  # the file and the hash stay consistent
            if bufs:
                await asyncio.to_thread(part.write, bufs)
        finally:
            reporter.update(desc, part.size)
