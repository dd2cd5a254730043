"""The store's files on disk, in Docker's layout (distribution.md 1.5), and how they are written.

```
<root>/layout.json   models.json   .lock
       blobs/sha256/<hex>[.incomplete]   manifests/sha256/<hex>   bundles/sha256/<hex>/model/…
```

Everything here is blocking and runs in a worker thread.  Files appear under their final name
only complete: temp file in the same directory, fsync, ``os.replace``, fsync of the directory.
``StoreLock`` is ``flock`` on ``<root>/.lock``, taken for the duration of one mutation and never
held by an idle process, so the daemon and a CLI or test process can share a store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InsufficientStorage, InvalidReference, StoreError
from ..fsmodes import FILE_MODE
from .digest import check_digest, hex_of

LAYOUT_VERSION = "1.0.0"
INCOMPLETE = ".incomplete"
TMP_MARK = ".tmp-"


@dataclass(frozen=True, slots=True)
class Layout:
    root: Path

    @property
    def index_path(self) -> Path:
        return self.root / "models.json"

    @property
    def layout_path(self) -> Path:
        return self.root / "layout.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests" / "sha256"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles" / "sha256"

    def blob(self, digest: str) -> Path:
        return self.blobs_dir / hex_of(digest)

    def incomplete(self, digest: str) -> Path:
        return self.blobs_dir / (hex_of(digest) + INCOMPLETE)

    def manifest(self, digest: str) -> Path:
        return self.manifests_dir / hex_of(digest)

    def bundle(self, digest: str) -> Path:
        return self.bundles_dir / hex_of(digest)

    def create(self) -> None:
        """Make the directories and ``layout.json``/``models.json`` when missing."""
        for d in (self.blobs_dir, self.manifests_dir, self.bundles_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.layout_path.exists():
            atomic_write(self.layout_path, _indent({"version": LAYOUT_VERSION}))
        if not self.index_path.exists():
            with StoreLock(self.lock_path):
                if not self.index_path.exists():
                    Index().save(self.index_path)


# -- the index (models.json) ------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    id: str
    tags: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        # Go writes a nil slice as null; we write [] (Docker reads both).
        return {"id": self.id, "tags": list(self.tags), "files": list(self.files)}


@dataclass(slots=True)
class Index:
    models: list[Entry] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Index:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as e:
            raise StoreError(f"cannot read the model index {path}: {e.strerror or e}") from e
        try:
            doc = json.loads(raw or b"{}")
            models = []
            for item in doc.get("models") or []:
                entry_id = check_digest(item.get("id"), "model id")
                tags = [str(t) for t in item.get("tags") or []]
                files = [check_digest(f, "blob digest") for f in item.get("files") or []]
                models.append(Entry(entry_id, tags, files))
        except (ValueError, AttributeError, TypeError, InvalidReference) as e:
            raise StoreError(f"the model index {path} is corrupt: {e}") from e
        return cls(models)

    def save(self, path: Path) -> None:
        atomic_write(path, _indent({"models": [m.to_json() for m in self.models]}))

    def find(self, model_id: str) -> Entry | None:
        return next((m for m in self.models if m.id == model_id), None)

    def find_tag(self, tag: str) -> Entry | None:
        return next((m for m in self.models if tag in m.tags), None)

    def untag(self, tag: str) -> Entry | None:
        """Take *tag* off whichever model has it (a tag belongs to at most one model)."""
        for m in self.models:
            if tag in m.tags:
                m.tags = [t for t in m.tags if t != tag]
                return m
        return None

    def add(self, model_id: str, files: list[str], tag: str | None) -> Entry:
        """Add (or find) the entry for *model_id* and move *tag* onto it."""
        entry = self.find(model_id)
        if entry is None:
            entry = Entry(model_id, [], list(files))
            self.models.append(entry)
        if tag is not None and tag not in entry.tags:
            self.untag(tag)
            entry.tags.append(tag)
        return entry

    def referenced(self, exclude: str | None = None) -> set[str]:
        return {f for m in self.models if m.id != exclude for f in m.files}


def _indent(doc: object) -> bytes:
    return json.dumps(doc, indent=2).encode()


# -- atomic writes, fsync, lock ----------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write *data* to *path* so that readers see the old or the new file, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + TMP_MARK)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise os_error(e, f"writing {path}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def os_error(e: OSError, doing: str) -> StoreError:
    """Translate an ``OSError`` where it enters the store."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"no space left on the store's disk while {doing}")
    return StoreError(f"store I/O failed while {doing}: {e.strerror or e}")


class StoreLock:
    """``flock`` on the store's lock file; blocking, so take it in a worker thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def sweep(layout: Layout, incomplete_max_age_s: float, tmp_max_age_s: float = 3600) -> int:
    """Delete ``.incomplete`` files older than the limit and stale temp files; count them."""
    now = time.time()
    removed = 0
    for d in (layout.blobs_dir, layout.manifests_dir, layout.root):
        with contextlib.suppress(FileNotFoundError):
            for p in d.iterdir():
                name = p.name
                limit = (
                    incomplete_max_age_s
                    if name.endswith(INCOMPLETE)
                    else tmp_max_age_s
                    if TMP_MARK in name
                    else None
                )
                if limit is None:
                    continue
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > limit:
                        p.unlink()
                        removed += 1
    return removed


def walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name
