"""``POST /models/load``: import the tar Docker's CLI streams (``docker model package``).

The tar holds ``blobs/sha256/<hex>`` for every layer and the config, then ``manifest.json``
(the raw manifest; its sha256 is the model id).  It is parsed as it arrives (a small async
ustar/pax reader: no temp file of the whole tar, never more than a batch in memory); each blob
is hashed while written to a temp file and must match the digest its name claims.  The model is
committed untagged unless a tag is given (Docker's CLI tags it afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import structlog

from ..errors import DigestMismatch, InvalidRequest
from ..fsmodes import FILE_MODE
from . import stamps
from .artifact import parse_manifest
from .digest import is_digest
from .layout import TMP_MARK, fsync_dir, os_error
from .model import MIB, Model, ProgressEvent, ProgressFn

if TYPE_CHECKING:
    from .local import LocalStore

log = structlog.get_logger(__name__)
BLOCK = 512
BATCH = 4 * MIB
MAX_MANIFEST = 4 << 20
MAX_META = 1 << 20


class TarError(InvalidRequest):
    code = "invalid_archive"


class _Bytes:
    """Exact reads over an async iterator of chunks."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._it = stream.__aiter__()
        self._buf = bytearray()
        self.eof = False

    async def _more(self) -> bool:
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            self.eof = True
            return False
        self._buf += chunk
        return True

    async def exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not await self._more():
                raise TarError("the model archive ended early (truncated tar)")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def pieces(self, n: int) -> AsyncIterator[bytes]:
        """*n* bytes as they come, in pieces."""
        left = n
        while left > 0:
            if not self._buf and not await self._more():
                raise TarError("the model archive ended early (truncated tar)")
            take = bytes(self._buf[:left])
            del self._buf[: len(take)]
            left -= len(take)
            yield take


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError as e:
        raise TarError("the model archive has a corrupt tar header") from e


def _header(block: bytes) -> tuple[str, int, bytes]:
    checksum = _octal(block[148:156])
    if checksum != sum(block[:148]) + 32 * 8 + sum(block[156:]):
        raise TarError("the model archive has a tar header with a bad checksum")
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            name = f"{prefix}/{name}"
    return name, _octal(block[124:136]), block[156:157]


def _pax_path(data: bytes) -> str | None:
    path = None
    while data:
        length_s, _, _rest = data.partition(b" ")
        try:
            length = int(length_s)
        except ValueError:
            break
        record = data[len(length_s) + 1 : length]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "replace")
        data = data[length:]
    return path


def _member_name(name: str) -> str | None:
    """A safe relative POSIX name, or None for anything with ``..`` or absolute."""
    p = PurePosixPath(name.removeprefix("./"))
    if p.is_absolute() or ".." in p.parts:
        return None
    return str(p)


async def load_archive(
    store: LocalStore, stream: AsyncIterator[bytes], tag: str | None, progress: ProgressFn | None
) -> Model:
    src = _Bytes(stream)
    manifest: bytes | None = None
    blobs: set[str] = set()
    long_name: str | None = None
    while True:
        block = await src.exactly(BLOCK)
        if block == bytes(BLOCK):
            break
        name, size, kind = _header(block)
        if long_name is not None:
            name, long_name = long_name, None
        padded = -(-size // BLOCK) * BLOCK
        if kind in (b"x", b"L"):
            if size > MAX_META:
                raise TarError("the model archive has an oversized tar metadata entry")
            data = (await src.exactly(padded))[:size]
            long_name = _pax_path(data) if kind == b"x" else data.split(b"\0", 1)[0].decode()
            continue
        member = _member_name(name)
        regular = kind in (b"0", b"\0", b"7")
        if regular and member == "manifest.json":
            if size > MAX_MANIFEST:
                raise TarError("the model archive's manifest.json is too large")
            manifest = (await src.exactly(padded))[:size]
            continue
        if regular and member is not None and member.startswith("blobs/sha256/"):
            digest = "sha256:" + member.removeprefix("blobs/sha256/")
            if not is_digest(digest):
                raise TarError(f"the model archive holds a blob with a bad name: {member!r}")
            await _write_blob(store, digest, size, src, progress)
            blobs.add(digest)
            await src.exactly(padded - size)
            continue
        async for _ in src.pieces(padded):  # directories and anything else: skipped
            pass
    if manifest is None:
        raise TarError("the model archive has no manifest.json")
    parsed = parse_manifest(manifest, "the loaded model")
    model = await store.commit(manifest, parsed, tag)
    log.info("store.loaded", model=model.id, tag=tag, blobs=len(blobs))
    if progress is not None:
        progress(ProgressEvent(kind="success", message="Model loaded successfully", mode="load"))
    return model


async def _write_blob(
    store: LocalStore, digest: str, size: int, src: _Bytes, progress: ProgressFn | None
) -> None:
    blobs_dir = store.layout.blobs_dir
    final = store.layout.blob(digest)

    def open_tmp() -> tuple[BinaryIO, str]:
        fd, tmp = tempfile.mkstemp(dir=blobs_dir, prefix=f"{final.name}{TMP_MARK}")
        return os.fdopen(fd, "wb"), tmp

    h = hashlib.sha256()

    def write(f: BinaryIO, bufs: list[bytes]) -> None:
        for b in bufs:
            h.update(b)
        f.writelines(bufs)

    with store.writing(digest):
        try:
            f, tmp = await asyncio.to_thread(open_tmp)
        except OSError as e:
            raise os_error(e, "loading a model archive") from e
        try:
            bufs: list[bytes] = []
            n = done = 0
            async for piece in src.pieces(size):
                bufs.append(piece)
                n += len(piece)
                if n >= BATCH:
                    await asyncio.to_thread(write, f, bufs)
                    done += n
                    bufs, n = [], 0
                    _report(progress, digest, size, done)
            await asyncio.to_thread(write, f, bufs)
            _report(progress, digest, size, size)
            got = "sha256:" + h.hexdigest()
            if got != digest:
                raise DigestMismatch(f"blob {digest} in the model archive hashes to {got}")
            await asyncio.to_thread(_finish, f, Path(tmp), final)
        except OSError as e:
            raise os_error(e, "loading a model archive") from e
        finally:
            await asyncio.to_thread(_discard, f, tmp)


def _finish(f: BinaryIO, tmp: Path, final: Path) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    if not final.exists():
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        stamps.record(final)


def _discard(f: BinaryIO, tmp: str) -> None:
    f.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _report(progress: ProgressFn | None, digest: str, size: int, current: int) -> None:
    if progress is not None:
        progress(
            ProgressEvent(
                kind="progress",
                message=f"Loaded: {current / MIB:.2f} MB",
                mode="load",
                digest=digest,
                layer_size=size,
                layer_current=current,
                current=current,
                total=size,
            )
        )
