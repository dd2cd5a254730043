"""Stat stamps: a blob counts as verified only while its stat matches the stamp."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from modelrunner.distribution import stamps


def blob(tmp_path: Path, data: bytes = b"weights") -> Path:
    d = tmp_path / "blobs" / "sha256"
    d.mkdir(parents=True, exist_ok=True)
    p = d / ("ab" * 32)
    p.write_bytes(data)
    return p


def test_a_stamp_holds_until_the_blob_changes(tmp_path: Path) -> None:
    p = blob(tmp_path)
    assert not stamps.still_verified(p)
    stamps.record(p)
    assert stamps.still_verified(p)
    p.write_bytes(b"weightz")  # same size, new mtime
    os.utime(p, ns=(0, p.stat().st_mtime_ns + 1))
    assert not stamps.still_verified(p)


def test_a_blob_replaced_under_its_name_is_not_verified(tmp_path: Path) -> None:
    p = blob(tmp_path)
    stamps.record(p)
    st = p.stat()
    other = p.with_name("other")
    other.write_bytes(b"weights")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, p)  # same size and mtime, another inode
    assert not stamps.still_verified(p)


def test_a_torn_or_missing_stamp_is_no_stamp(tmp_path: Path) -> None:
    p = blob(tmp_path)
    stamps.record(p)
    stamps.stamp_path(p).write_bytes(b"\xff\xfe")
    assert not stamps.still_verified(p)
    stamps.forget(p)
    stamps.forget(p)  # twice is fine
    assert not stamps.still_verified(p)


def test_sweep_drops_stamps_of_gone_blobs_only(tmp_path: Path) -> None:
    kept, gone = blob(tmp_path), blob(tmp_path).with_name("cd" * 32)
    gone.write_bytes(b"x")
    stamps.record(kept)
    stamps.record(gone)
    gone.unlink()
    stamps.sweep_stamps(kept.parent)
    assert stamps.still_verified(kept)
    assert not stamps.stamp_path(gone).exists()


def test_record_on_an_unwritable_store_is_silent(tmp_path: Path) -> None:
    p = tmp_path / "absent"
    stamps.record(p)  # no blob, no stamp, no error
    assert not stamps.still_verified(p)


def test_a_stamp_that_cannot_be_written_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the stamp's write after its temp file exists: the file goes too
    (seen in a pull racing another onto a full disk)."""
    p = blob(tmp_path)

    def full(self: Path, text: str) -> int:
        self.touch()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    stamps.record(p)
    assert list(stamps.stamp_path(p).parent.iterdir()) == []
    assert not stamps.still_verified(p)
