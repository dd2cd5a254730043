"""The prompt cache's directory on disk: manifests, slot files, and which of them to trust.

Blocking file work only, called in a thread by ``runners/kvcache.py`` (which owns when to save and
restore, and talks to llama-server).  The manifest is the commit point: slot files are checked
(size against what llama-server said it wrote), hashed and renamed from ``.part`` to ``.bin``
first, the manifest replaces the old one (temp file plus ``os.replace``) next, and the previous
entry's files go last.  Anything no manifest names is garbage a killed save left (``sweep``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

FORMAT = 1  # manifest format; another value is a foreign entry
_HASH_CHUNK = 1 << 20
_MANIFEST = re.compile(r"[0-9a-f]{24}\.json")


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Everything that makes a saved cache valid for a runner; a different key never restores."""

    model_id: str
    mode: str
    context_size: int
    flags: tuple[str, ...]  # runtime flags + LLAMA_ARGS, conservatively all of them
    swa_full: bool
    engine: str  # llama-server's version and path (a rebuild may change the file format)
    # The key's name on disk, computed once: every request of a runner asks for it.
    digest: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = json.dumps(self.to_json(), sort_keys=True).encode()
        object.__setattr__(self, "digest", hashlib.sha256(raw).hexdigest()[:24])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init
        }
        out["flags"] = list(self.flags)
        return out


class SaveFailed(Exception):
    """A save that could not finish; the stop goes on without it."""


class CacheDir:
    """One flat directory (llama-server's ``--slot-save-path`` takes bare names)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.dir = path
        self.max_bytes = max_bytes

    def manifests(self) -> list[Path]:
        try:
            return [p for p in self.dir.iterdir() if _MANIFEST.fullmatch(p.name)]
        except FileNotFoundError:
            return []

    def read_manifest(self, digest: str) -> dict[str, Any] | None:
        path = self.dir / f"{digest}.json"
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        if not isinstance(value, dict):
            raise SaveFailed(f"{path.name} is not a manifest")
        return value

    def verify(self, row: Any) -> None:
        if not isinstance(row, dict) or not re.fullmatch(
            r"[0-9a-zA-Z-]+-s\d+\.bin", str(row["file"])
        ):
            raise SaveFailed("a manifest row names no slot file")
        path = self.dir / row["file"]
        size = path.stat().st_size
        if size != row["bytes"] or _sha256(path) != row["sha256"]:
            raise SaveFailed(f"{path.name} does not match its manifest (size or checksum)")

    def commit(
        self,
        key: CacheKey,
        rows: list[dict[str, Any]],
        *,
        digest: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """Check and rename the .part files, then replace the manifest: the commit point.

        *digest* names another entry than the key's own (a conversation of it), *extra* adds
        members to its manifest."""
        name = digest or key.digest
        slots = []
        for row in rows:
            part = self.dir / (row["file"] + ".part")
            size = part.stat().st_size
            if size != int(row.get("n_written") or -1):
                raise SaveFailed(f"{part.name}: {size} bytes on disk, llama-server wrote more")
            digest = _sha256(part)
            os.replace(part, self.dir / row["file"])
            slots.append(
                {
                    "slot": row["slot"],
                    "file": row["file"],
                    "tokens": int(row.get("n_saved") or 0),
                    "bytes": size,
                    "sha256": digest,
                }
            )
        old = self.entry_files(name)
        manifest = {"format": FORMAT, "key": key.to_json(), "saved_at": time.time(), "slots": slots}
        manifest.update(extra or {})
        tmp = self.dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, self.dir / f"{name}.json")
        for path in old - {self.dir / s["file"] for s in slots}:
            path.unlink(missing_ok=True)
        return sum(s["tokens"] for s in slots), sum(s["bytes"] for s in slots)

    def entry_files(self, digest: str) -> set[Path]:
        """The slot files the entry's current manifest names (none if it has none)."""
        try:
            manifest = self.read_manifest(digest)
        except (SaveFailed, ValueError, OSError):
            return set()
        rows = manifest.get("slots") if manifest else None
        if not isinstance(rows, list):
            return set()
        return {self.dir / str(r["file"]) for r in rows if isinstance(r, dict) and "file" in r}

    def enforce_bound(self, keep: str) -> list[str]:
        """Delete least recently used entries (manifest mtime) until under max_bytes; returns
        the entries deleted."""
        entries = []
        for manifest in self.manifests():
            digest = manifest.name.removesuffix(".json")
            files = [manifest, *self.entry_files(digest)]
            size = sum(_size(p) for p in files)
            entries.append((_mtime(manifest), digest, size))
        total = sum(e[2] for e in entries)
        deleted = []
        for _, digest, size in sorted(entries, key=lambda e: (e[1] == keep, e[0])):
            if total <= self.max_bytes:
                break
            log.info("kvcache.evicted", entry=digest, bytes=size, max_bytes=self.max_bytes)
            self.delete_entry(digest)
            deleted.append(digest)
            total -= size
        return deleted

    def conversations(self) -> list[tuple[str, dict[str, Any], float, int]]:
        """Every committed conversation entry: digest, manifest, mtime (its LRU time), bytes."""
        out = []
        for manifest in self.manifests():
            digest = manifest.name.removesuffix(".json")
            try:
                value = self.read_manifest(digest)
            except (SaveFailed, ValueError, OSError):
                continue
            if value is None or "conversation" not in value:
                continue
            size = sum(_size(p) for p in [manifest, *self.entry_files(digest)])
            out.append((digest, value, _mtime(manifest), size))
        return out

    def delete_entry(self, digest: str) -> None:
        files = self.entry_files(digest)
        (self.dir / f"{digest}.json").unlink(missing_ok=True)  # uncommit first
        for path in files:
            path.unlink(missing_ok=True)

    def remove(self, doomed: Callable[[dict[str, Any]], bool]) -> int:
        freed = 0
        for manifest in self.manifests():
            try:
                key = json.loads(manifest.read_text(encoding="utf-8")).get("key") or {}
            except (OSError, ValueError, AttributeError):
                key = {}
            if doomed(key):
                digest = manifest.name.removesuffix(".json")
                freed += sum(_size(p) for p in [manifest, *self.entry_files(digest)])
                self.delete_entry(digest)
        return freed

    def drop_parts(self, digest: str) -> None:
        for path in self.dir.glob(f"{digest}-*.part"):
            path.unlink(missing_ok=True)

    def sweep(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        committed: set[Path] = set()
        for manifest in self.manifests():
            committed.add(manifest)
            committed |= self.entry_files(manifest.name.removesuffix(".json"))
        removed = 0
        for path in self.dir.iterdir():
            if path not in committed and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def disk_usage(self) -> int:
        try:
            return sum(_size(p) for p in self.dir.iterdir())
        except FileNotFoundError:
            return 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _touch(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def touch(path: Path) -> None:
    """Mark an entry as used now (the LRU order is the manifests' mtime)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)
