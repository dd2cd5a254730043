"""fsmodes: the owner-only umask, the start-time tightening walk, and the runners' short folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrunner import fsmodes
from modelrunner.distribution.layout import atomic_write
from modelrunner.errors import ConfigError
from modelrunner.runners.runner import prepare_dirs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_private_umask_adds_group_and_other_to_the_users_own(loose_umask: None) -> None:
    os.umask(0o202)
    assert fsmodes.private_umask() == 0o202
    assert os.umask(0) == 0o277  # the user's stricter owner bit is kept


def test_tighten_walks_everything_and_never_follows_a_symlink(tmp_path: Path) -> None:
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / "run" / "deep").mkdir(parents=True)
    outside.mkdir()
    (outside / "f").write_text("not ours to change")
    (home / "run" / "deep" / "f").write_text("x")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(home / "run" / "s.sock"))
    (home / "file-link").symlink_to(outside / "f")
    (home / "dir-link").symlink_to(outside)
    for p in [home, home / "run", home / "run" / "deep", outside]:
        p.chmod(0o777)
    for p in [home / "run" / "deep" / "f", home / "run" / "s.sock", outside / "f"]:
        p.chmod(0o666)

    changed, errors = fsmodes.tighten([home, home / "run", tmp_path / "missing"])

    assert (changed, errors) == (5, [])
    assert [mode(p) for p in (home, home / "run", home / "run" / "deep")] == [0o700] * 3
    assert mode(home / "run" / "deep" / "f") == mode(home / "run" / "s.sock") == 0o600
    assert mode(outside) == 0o777  # behind symlinks: untouched
    assert mode(outside / "f") == 0o666
    assert fsmodes.tighten([home]) == (0, [])


def test_tighten_refuses_the_users_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    tmp_path.chmod(0o755)
    changed, errors = fsmodes.tighten([tmp_path])
    assert changed == 0
    assert "not tightened" in errors[0]
    assert mode(tmp_path) == 0o755


def test_store_files_are_owner_only_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    atomic_write(tmp_path / "models.json", b"{}")
    assert mode(tmp_path / "models.json") == fsmodes.FILE_MODE


def short_dir(run_dir: Path) -> Path:
    tag = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"mr-{os.getuid()}-{tag}"


def test_the_short_socket_folder_is_tightened_and_must_be_ours(tmp_path: Path) -> None:
    run_dir = tmp_path / ("r" * 100)  # too long a path for sockets: they go to a short one
    short = short_dir(run_dir)
    try:
        short.mkdir(mode=0o700)
        short.chmod(0o777)  # an older version's, under umask 000
        assert prepare_dirs(run_dir, tmp_path / "logs") == short
        assert mode(short) == 0o700
        if os.geteuid() == 0:  # someone else took the name first
            os.chown(short, 65534, 65534)
            with pytest.raises(ConfigError, match="not a folder of this user's"):
                prepare_dirs(run_dir, tmp_path / "logs")
    finally:
        shutil.rmtree(short, ignore_errors=True)
