"""Stat stamps of blobs whose bytes this store hashed as it wrote them.

Pull, package and archive loading hash every blob on its way in.  Right after the verified
bytes are renamed into place, the blob's (size, mtime_ns, inode, device) goes to
``blobs/sha256/.verified/<hex>``.  While the blob's stat still matches, push streams it without
hashing it again (the hash cost push a third of its rate): the registry checks the digest of
what it receives, and push confirms a DIGEST_INVALID with a local hash before it calls the blob
corrupt.  A stamp is only a hint: a missing, torn or stale one means the blob is hashed again.

Blocking; call from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .layout import TMP_MARK

STAMPS = ".verified"


def stamp_path(blob: Path) -> Path:
    return blob.parent / STAMPS / blob.name


def stamp_of(st: os.stat_result) -> str:
    """What must stay the same for the bytes to be the ones hashed."""
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino} {st.st_dev}"


def record(blob: Path) -> None:
    """Stamp *blob*, whose bytes were just verified (best effort: no stamp only costs a hash)."""
    path = stamp_path(blob)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_text(stamp_of(blob.stat()))
        os.replace(tmp, path)  # no fsync: a stamp lost in a crash is a re-hash, nothing worse
    except OSError:
        # A full disk fails the write after the file was created: leave nothing behind.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def still_verified(blob: Path) -> bool:
    """True while *blob* has its stamp and its stat matches it."""
    try:
        return stamp_path(blob).read_text() == stamp_of(blob.stat())
    except (OSError, UnicodeDecodeError):
        return False


def forget(blob: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        stamp_path(blob).unlink()


def sweep_stamps(blobs_dir: Path) -> None:
    """Drop stamps (and stamp temp files) whose blob is gone."""
    with contextlib.suppress(FileNotFoundError):
        for p in (blobs_dir / STAMPS).iterdir():
            if TMP_MARK in p.name or not (blobs_dir / p.name).exists():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
