"""Package a local GGUF (shards, optional license and chat template) or a safetensors model
directory into the store.

Each file is copied into ``blobs/`` while it is hashed (one pass; a copy, never a link, so a
later edit of the user's file cannot corrupt the store), then config and manifest are built as
Docker's packager builds them and the model is committed under its tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ..errors import InvalidRequest, ModelRunnerError
from ..fsmodes import FILE_MODE
from . import mediatypes as mt
from . import stamps
from .artifact import build_config, build_manifest, layer, parse_manifest
from .digest import sha256_digest
from .gguf import read_gguf, shard_paths
from .layout import TMP_MARK, atomic_write, fsync_dir, os_error
from .model import MIB, Model, ProgressEvent, ProgressFn
from .reference import Reference
from .safetensors import config_values, scan_dir

if TYPE_CHECKING:
    from .local import LocalStore

log = structlog.get_logger(__name__)
COPY_CHUNK = 4 * MIB


def ingest_file(
    blobs_dir: Path, src: Path, on_bytes: Callable[[int], None] | None = None
) -> tuple[str, int]:
    """Copy *src* into *blobs_dir* under its digest (temp + fsync + rename); (digest, size)."""
    h = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=blobs_dir, prefix="ingest" + TMP_MARK)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            while block := f.read(COPY_CHUNK):
                h.update(block)
                out.write(block)
                size += len(block)
                if on_bytes is not None:
                    on_bytes(size)
            out.flush()
            os.fsync(out.fileno())
        digest = f"sha256:{h.hexdigest()}"
        final = blobs_dir / h.hexdigest()
        if final.exists():
            os.unlink(tmp)
        else:
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, final)
            fsync_dir(blobs_dir)
            stamps.record(final)
        return digest, size
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InvalidRequest(f"{what} {str(path)!r} does not exist or is not a file")
    return path


def _files(
    gguf: Path, license: Path | None, template: Path | None, mmproj: Path | None
) -> list[tuple[str, Path]]:
    """(media type, path) of every layer in Docker's order: shards, license, template, mmproj."""
    files = [(mt.GGUF, p) for p in shard_paths(Path(gguf).expanduser())]
    for kind, path in ((mt.LICENSE, license), (mt.CHAT_TEMPLATE, template), (mt.MMPROJ, mmproj)):
        if path is not None:
            files.append((kind, Path(path).expanduser()))
    return files


async def package(
    store: LocalStore,
    gguf: Path,
    ref: Reference,
    *,
    license: Path | None = None,
    chat_template: Path | None = None,
    context_size: int | None = None,
    mmproj: Path | None = None,
    progress: ProgressFn | None = None,
) -> Model:
    if context_size is not None and not 0 < context_size <= 2**31 - 1:
        raise InvalidRequest(f"context size must be a positive integer, got {context_size}")
    files = await asyncio.to_thread(_files, gguf, license, chat_template, mmproj)
    shards = [p for kind, p in files if kind == mt.GGUF]

    def check() -> tuple[dict[str, object], list[os.stat_result]]:
        for kind, p in files:
            _check_file(p, "license" if kind == mt.LICENSE else "file")
        values = read_gguf(shards[0]).config_values()
        return values, [p.stat() for _, p in files]

    values, stats = await asyncio.to_thread(check)
    if context_size is not None:
        values["context_size"] = context_size
    named = [(kind, path, path.name) for kind, path in files]
    return await _commit(store, named, stats, values, ref, mt.CONFIG_V01, progress)


async def package_dir(
    store: LocalStore,
    directory: Path,
    ref: Reference,
    *,
    context_size: int | None = None,
    progress: ProgressFn | None = None,
) -> Model:
    """A safetensors model directory as Docker packages it: a layer per file, config v0.2."""
    if context_size is not None and not 0 < context_size <= 2**31 - 1:
        raise InvalidRequest(f"context size must be a positive integer, got {context_size}")

    def scan() -> tuple[list[tuple[str, Path, str]], list[os.stat_result], dict[str, object]]:
        found = scan_dir(Path(directory))
        values = config_values(found)
        return (
            [(f.media_type, f.path, f.relpath) for f in found],
            [f.path.stat() for f in found],
            values,
        )

    named, stats, values = await asyncio.to_thread(scan)
    if context_size is not None:
        values["context_size"] = context_size
    return await _commit(store, named, stats, values, ref, mt.CONFIG_V02, progress)


async def _commit(
    store: LocalStore,
    files: list[tuple[str, Path, str]],
    stats: list[os.stat_result],
    values: dict[str, object],
    ref: Reference,
    config_media_type: str,
    progress: ProgressFn | None,
) -> Model:
    """Copy each (media type, path, name in the artifact) into the store, then commit."""
    total = sum(st.st_size for st in stats)
    done = 0

    def report(digest: str, size: int, current: int) -> None:
        if progress is not None:
            progress(
                ProgressEvent(
                    kind="progress",
                    message=f"Packaging: {(done + current) / MIB:.2f} MB",
                    mode="package",
                    digest=digest,
                    layer_size=size,
                    layer_current=current,
                    current=done + current,
                    total=total,
                )
            )

    with contextlib.ExitStack() as held:  # our new blobs stay out of gc/remove until committed
        layers = []
        for (kind, path, name), st in zip(files, stats, strict=True):
            try:
                digest, size = await asyncio.to_thread(
                    ingest_file, store.layout.blobs_dir, path, None
                )
            except ModelRunnerError:
                raise
            except OSError as e:
                raise os_error(e, f"copying {path} into the store") from e
            held.enter_context(store.writing(digest))
            report(digest, size, size)
            done += size
            layers.append(layer(kind, digest, size, name, st.st_mtime_ns))
        config = build_config(values, [x["digest"] for x in layers])
        config_digest = sha256_digest(config)
        held.enter_context(store.writing(config_digest))
        try:
            await asyncio.to_thread(atomic_write, store.layout.blob(config_digest), config)
        except OSError as e:
            raise os_error(e, "writing the config blob") from e
        raw = build_manifest(config_digest, len(config), layers, config_media_type)
        model = await store.commit(raw, parse_manifest(raw, ref.display), ref.store_name)
    log.info("store.packaged", model=model.id, tag=ref.store_name, bytes=total)
    if progress is not None:
        progress(
            ProgressEvent(
                kind="success",
                message=f"Model packaged successfully as {ref.display}",
                mode="package",
                current=total,
                total=total,
            )
        )
    return model
